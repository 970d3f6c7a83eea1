"""--push_to_hub: checked before any work (offline, no token), uploaded with huggingface_hub after verification."""

from __future__ import annotations

from pathlib import Path

from ..config.export import HubArgs
from ..errors import ConfigError, TailorkitError


def check_hub(hub: HubArgs) -> str | None:
    """The token to upload with, or None without --push_to_hub; a clear error when an upload cannot work."""
    if not hub.push_to_hub:
        return None
    from huggingface_hub import get_token, is_offline_mode

    if is_offline_mode():
        raise ConfigError("--push_to_hub: the hub is in offline mode (HF_HUB_OFFLINE is set), so the upload would "
                          "fail after the export; unset HF_HUB_OFFLINE, or export without --push_to_hub and upload "
                          "the folder later with `hf upload`")
    token = hub.hub_token or get_token()
    if not token:
        raise ConfigError("--push_to_hub needs a hub token with write access: pass --hub_token, set HF_TOKEN, or "
                          "run `hf auth login` first")
    return token


def push(folder: Path, hub: HubArgs, token: str) -> str:
    """Create the repository (if needed) and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(hub.hub_model_id, private=hub.hub_private_repo, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=hub.hub_model_id, folder_path=str(folder), repo_type="model",
                                 commit_message="Upload model exported and verified by tailorkit export")
    except (HfHubHTTPError, OSError) as e:
        raise TailorkitError(f"upload of {folder} to {hub.hub_model_id} failed: {e}; the verified export is "
                             f"complete in {folder}, upload it again with --push_to_hub or `hf upload`") from e
    return str(info.commit_url)

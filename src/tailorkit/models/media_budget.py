"""The image/video token budget (--max_pixels, --min_pixels, --video_max_frames, --fps) applied to a processor.

The budget is written into the processor's own settings, so ``save_pretrained`` records it with every
checkpoint and a plain ``AutoProcessor.from_pretrained`` of that checkpoint applies it identically at
inference. A setting the processor cannot honour is an error, never silently ignored.
"""

from __future__ import annotations

from ..config.train import ModelArgs
from ..errors import ConfigError


def apply_media_budget(processor, args: ModelArgs) -> dict:
    """Set the budget on ``processor`` in place; returns the settings that were applied (empty when none)."""
    applied = {}
    if args.max_pixels is not None or args.min_pixels is not None:
        applied.update(_image_pixels(processor, args.max_pixels, args.min_pixels))
    if args.video_max_frames is not None or args.fps is not None:
        applied.update(_video_frames(processor, args.video_max_frames, args.fps))
    return applied


def supports_pixel_budget(image_processor) -> bool:
    """Whether the image processor resizes to a pixel-count range (Qwen2-VL style: size in pixels, merged patches)."""
    size = dict(getattr(image_processor, "size", None) or {})  # a dict or transformers' SizeDict
    return size.get("shortest_edge") is not None and size.get("longest_edge") is not None and \
        hasattr(image_processor, "merge_size")


def _image_pixels(processor, max_pixels: int | None, min_pixels: int | None) -> dict:
    """Images only: videos keep the processor's own video budget."""
    proc = getattr(processor, "image_processor", None)
    if proc is None or not supports_pixel_budget(proc):
        kind = type(proc).__name__ if proc is not None else "no image processor"
        raise ConfigError(f"--max_pixels/--min_pixels need an image processor that resizes to a pixel budget; "
                          f"this model has {kind}; drop these settings")
    size = {k: v for k, v in dict(proc.size).items() if v is not None}
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        raise ConfigError(f"min_pixels {size['shortest_edge']} exceeds max_pixels {size['longest_edge']} "
                          "(one of them comes from the model's processor); set both")
    proc.size = size if isinstance(proc.size, dict) else type(proc.size)(**size)
    for attr, value in (("max_pixels", max_pixels), ("min_pixels", min_pixels)):
        if value is not None and getattr(proc, attr, None) is not None:
            setattr(proc, attr, int(value))  # older processors read these instead of size
    return {"max_pixels": size["longest_edge"], "min_pixels": size["shortest_edge"]}


def _video_frames(processor, max_frames: int | None, fps: float | None) -> dict:
    """Written as the video processor's ``fps`` / ``max_frames``: tailorkit decodes videos itself (PyAV) and
    samples frames by these two (data/media.py), for every video processor, so they hold for any family."""
    proc = getattr(processor, "video_processor", None)
    if proc is None:
        raise ConfigError("--video_max_frames/--fps need a model whose processor takes videos; drop these settings")
    applied = {}
    for attr, value in (("max_frames", max_frames), ("fps", fps)):
        if value is not None:
            setattr(proc, attr, value)
            applied[attr] = value
    return applied

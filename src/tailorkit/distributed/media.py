"""Every rank runs the same collectives whatever its batch holds: a text-only batch still runs the vision tower.

Under ZeRO-3 and FSDP a module's weights are gathered from every rank when it runs, and its gradients
reduced across ranks in the backward pass. If one rank's batch has images and another's is text only, the
first runs the vision tower and the second does not: the first waits forever for a gather that never comes.
Under DDP the same step leaves the vision tower without gradients on one rank. So on a batch that did not
reach the vision tower, a dummy image (a few zero patches) goes through the family's own
``get_image_features`` just before the language model runs, and its output is added to the input
embeddings times zero: the same modules run in the same order forward and backward on every rank, and
the loss and every gradient are exactly what they would be without it.
"""

from __future__ import annotations

import torch

from ..models.family import Family


def media_owner(model: torch.nn.Module, family: Family) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(module with ``get_image_features``, vision tower, language model) of a (peft-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision = base.get_submodule(family.vision[0])
    llm = base.get_submodule(family.llm[0])
    owner_name = family.vision[0].rsplit(".", 1)[0] if "." in family.vision[0] else ""
    owner = base.get_submodule(owner_name) if owner_name else base
    return owner, vision, llm


class MediaCollectives:
    """Hooks that run a dummy image through the vision path on training batches that have none."""

    def __init__(self, model: torch.nn.Module, family: Family):
        self.owner, self.vision, self.llm = media_owner(model, family)
        self.dummy_inputs = family.dummy_image
        self.vision_ran = False
        self.dummy_passes = 0  # how many batches needed one (tests read it)
        self.handles = [self.vision.register_forward_hook(self._saw_vision),
                        self.llm.register_forward_pre_hook(self._before_llm, with_kwargs=True)]

    def _saw_vision(self, module, args, output):
        self.vision_ran = True

    def _before_llm(self, module, args, kwargs):
        ran, self.vision_ran = self.vision_ran, False
        embeds = kwargs.get("inputs_embeds")
        if ran or not module.training or not torch.is_grad_enabled() or embeds is None:
            return None
        features = self.owner.get_image_features(**self.dummy_inputs(self.owner, embeds))
        self.vision_ran = False
        self.dummy_passes += 1
        kwargs["inputs_embeds"] = embeds + 0.0 * tensor_sum(used_features(features)).to(embeds.dtype)
        return args, kwargs

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# Fields of a vision output that the model does not merge into the text: summing them would add a backward
# path the real batches lack (ZeRO-3 checks that every rank fetches the same modules in the same order).
_UNUSED_FIELDS = ("last_hidden_state", "hidden_states", "attentions")


def used_features(output):
    """What the language model receives from ``get_image_features``: its output without the unused fields."""
    if isinstance(output, dict):
        return {k: v for k, v in output.items() if k not in _UNUSED_FIELDS}
    return output


def tensor_sum(value) -> torch.Tensor:
    """Sum of every floating-point tensor inside a model output (tensors, tuples, lists, ModelOutput fields)."""
    if isinstance(value, torch.Tensor):
        return value.float().sum() if value.is_floating_point() else torch.zeros(())
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    parts = [tensor_sum(v) for v in items]
    return torch.stack([p.to(parts[0].device) for p in parts]).sum() if parts else torch.zeros(())


def keep_collectives_in_step(model: torch.nn.Module, family: Family, world_size: int,
                             sharded: bool) -> MediaCollectives | None:
    """Install the dummy vision pass where ranks could disagree: several processes and a family that has one.

    ``sharded``: the engine gathers weights per module (ZeRO-3, FSDP), where a family without a dummy pass
    gets a warning (under DDP a rank without images only needs --ddp_find_unused_parameters true).
    """
    if world_size < 2 or not family.is_multimodal:
        return None
    if family.dummy_image is None:
        if not sharded:
            return None
        print(f"[tailorkit] warning: the {family.name} family has no dummy vision pass: under ZeRO-3 / FSDP keep "
              "every rank's batches of the same kind (all with images or all text) or a step can hang")
        return None
    return MediaCollectives(model, family)

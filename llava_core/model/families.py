"""The vision-language model families the project trains, one entry each: transformers' classes
(``AutoModelForImageTextToText`` / ``AutoProcessor`` load them all), the parts by module name, what
LoRA may wrap, the text an image becomes in a prompt, how a batch's images are combined, whether
batches pack, and which library stacks have the family. Adding a family is one entry here plus
its tiny model in ``llava_core.demo.families`` (and so its test).

The family is read from the checkpoint's ``config.model_type``; a type not in :data:`FAMILIES`
is refused before launch, naming the supported ones (:func:`family_of`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

MODERN, DCU = "modern", "dcu"
"""The library stacks (``llava_core.compat``): transformers 5.x on torch >= 2.6, and 4.55.4 on the
site's torch 2.1 / 2.4."""

# module-name fragments per layout (the same on both stacks); the most specific first, since the
# first fragment a parameter name contains names its part
LLAVA_LAYOUT = (("vision_tower", "vision_tower."), ("projector", "multi_modal_projector."),
                ("llm", "language_model."), ("lm_head", "lm_head."))
ANYRES_LAYOUT = (*LLAVA_LAYOUT, ("projector", "image_newline"))
"""LLaVA-NeXT / OneVision: the AnyRes row separator ``image_newline`` trains with the projector
(as a parameter, not a module, it stays frozen under LoRA)."""
QWEN_LAYOUT = (("projector", "visual.merger."), ("projector", "visual.deepstack_merger_list."),
               ("vision_tower", "visual."), ("llm", "language_model."), ("lm_head", "lm_head."))
IDEFICS_LAYOUT = (("vision_tower", "vision_model."), ("projector", "connector."), ("llm", "text_model."),
                  ("lm_head", "lm_head."))

_PEFT_WRAPPERS = re.compile(r"(?:modules_to_save\.[^.]+|original_module)\.")


@dataclass(frozen=True)
class Family:
    """One model family (see the module's docstring)."""

    model_type: str
    """``config.model_type`` of its checkpoints."""
    title: str
    """What users call it."""
    parts: tuple[tuple[str, str], ...]
    """(part, module-name fragment): vision_tower, projector (a merger or connector), llm, lm_head."""
    modules: dict[str, tuple[str, ...]]
    """The module names (last components) of the projector and vision tower, for peft's
    ``modules_to_save`` when LoRA trains them in full beside the adapters."""
    language_model: str
    """The decoder stack's attribute path from the model (``model.language_model``)."""
    placeholder: str
    """The processor attribute that holds the text a prompt carries for an image, which the
    processor expands into the image's tokens (``image_token``; Gemma 3: ``boi_token``)."""
    image_batching: str
    """How the images of a batch are combined: ``cat`` (every tensor along its first dimension),
    ``pad_patches`` (AnyRes: patches padded to the batch's most, then along the first dimension),
    ``tiles`` (Idefics3: every tile along the second dimension of one row), ``pad_size`` (Pixtral:
    each image at its own size, padded to the batch's largest)."""
    stacks: frozenset[str] = frozenset({MODERN, DCU})
    lora_parts: frozenset[str] = frozenset({"llm"})
    """The parts whose linear layers LoRA wraps."""
    packs: bool = False
    """Whether batches pack (``--packing``: ``llava_core.train.packing``, Qwen-VL's 3-D rotary
    positions per segment); the others train padded and say so once."""
    llava_templates: bool = False
    """Whether LLaVA's prompt templates (``--version v1``...) apply; else the processor's chat template."""
    needs_torchvision: bool = True
    """Whether its processor needs torchvision (a video processor it builds, even for images)."""
    notes: tuple[str, ...] = field(default=())

    def part_of(self, name: str) -> str | None:
        """The part a parameter or module name belongs to (peft's wrappers of a module trained in
        full looked through), or None."""
        name = _PEFT_WRAPPERS.sub("", name)
        return next((part for part, fragment in self.parts if fragment in name), None)

    @property
    def estimable(self) -> bool:
        """Whether the memory estimate (``llava_core.train.memory.job_shape``) can count its
        parameters: its table names a vision tower, a projector, an LLM and an lm_head."""
        return {part for part, _ in self.parts} == {"vision_tower", "projector", "llm", "lm_head"}

    def fragments(self, part: str) -> tuple[str, ...]:
        """The module-name fragments of ``part``."""
        return tuple(fragment for p, fragment in self.parts if p == part)


_LLAVA_MODULES = {"projector": ("multi_modal_projector",), "vision_tower": ("vision_tower",)}


def _llava_like(model_type: str, title: str, batching: str = "cat", layout=LLAVA_LAYOUT, **kw) -> Family:
    return Family(model_type, title, layout, _LLAVA_MODULES, "model.language_model", "image_token", batching, **kw)


def _qwen(model_type: str, title: str, **kw) -> Family:
    modules = {"projector": ("merger", "deepstack_merger_list"), "vision_tower": ("visual",)}
    return Family(model_type, title, QWEN_LAYOUT, modules, "model.language_model", "image_token", "cat", **kw)


def _idefics(model_type: str, title: str, **kw) -> Family:
    modules = {"projector": ("connector",), "vision_tower": ("vision_model",)}
    return Family(model_type, title, IDEFICS_LAYOUT, modules, "model.text_model", "image_token", "tiles", **kw)


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    _llava_like("llava", "LLaVA-1.5", packs=True, llava_templates=True, needs_torchvision=False),
    _llava_like("llava_next", "LLaVA-NeXT", "pad_patches", ANYRES_LAYOUT, packs=True, llava_templates=True,
                needs_torchvision=False),
    _llava_like("llava_onevision", "LLaVA-OneVision", "pad_patches", ANYRES_LAYOUT, packs=True),
    _qwen("qwen2_vl", "Qwen2-VL", packs=True),
    _qwen("qwen2_5_vl", "Qwen2.5-VL", packs=True),
    _qwen("qwen3_vl", "Qwen3-VL", packs=True, stacks=frozenset({MODERN}),
          notes=("transformers 4.55 (the dcu stack) has no Qwen3-VL",)),
    _llava_like("internvl", "InternVL"),
    Family("gemma3", "Gemma 3", LLAVA_LAYOUT, _LLAVA_MODULES, "model.language_model", "boi_token", "cat",
           stacks=frozenset({MODERN}), needs_torchvision=False,
           notes=("transformers 4.55's Gemma 3 needs torch >= 2.6",)),
    _idefics("idefics3", "Idefics3", needs_torchvision=False),
    _idefics("smolvlm", "SmolVLM"),
    _llava_like("mistral3", "Mistral 3 (Pixtral vision)", "pad_size", needs_torchvision=False),
)}


class UnsupportedFamily(ValueError):
    """A checkpoint whose ``model_type`` is no supported family (or not on this stack)."""


def supported(stack: str | None = None) -> list[str]:
    """The model types of the families on ``stack`` (every family when None)."""
    return [t for t, f in FAMILIES.items() if stack is None or stack in f.stacks]


def family_of(model_type: str, stack: str | None = None, where: str = "") -> Family:
    """The family of ``model_type``; UnsupportedFamily naming the supported ones when it is none
    (or not on ``stack``). ``where`` names the checkpoint in the message."""
    family = FAMILIES.get(model_type)
    at = f"{where} " if where else ""
    if family is None:
        raise UnsupportedFamily(f"{at}(model_type {model_type!r}) is not a supported model family: "
                                f"supported are {', '.join(supported())}")
    if stack is not None and stack not in family.stacks:
        why = "; ".join(family.notes) or f"only on the {', '.join(sorted(family.stacks))} stack"
        raise UnsupportedFamily(f"{at}is {family.title} (model_type {model_type!r}), not available on the {stack} "
                                f"stack ({why}); on this stack: {', '.join(supported(stack))}")
    return family

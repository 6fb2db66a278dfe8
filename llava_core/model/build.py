"""The model: transformers' LLaVA class, loaded from a checkpoint or assembled from a vision tower
and an LLM with a fresh projector; a checkpoint of another family of ``llava_core.model.families``
(``AutoModelForImageTextToText``); or a causal LM alone (no vision part: trained text only, its
tokenizer in place of the processor); its processor; a weightless skeleton; the projector in
LLaVA's own format.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionProcessor,
    LlavaProcessor,
    PreTrainedModel,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from llava_core.compat import (
    dtype_kwargs,
    image_processor_class,
    image_processor_kwargs,
    llava_load_kwargs,
    load_auto_processor,
    stack,
)
from llava_core.config import TrainConfig, parse_pinpoints
from llava_core.data.conversation import TEMPLATES, chat_template
from llava_core.data.encoding import image_token_count, tokenizer_of
from llava_core.data.images import image_processor_for
from llava_core.model.families import FAMILIES, Family, UnsupportedFamily, family_of, supported
from llava_core.model.llava_original import as_parts, is_original
from llava_core.model.quantize import qlora_load_kwargs

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


def checkpoint_family(path: str, cache_dir: str | None = None) -> Family | None:
    """The family of the vision-language checkpoint in ``path`` (LLaVA for LLaVA's original
    format); None for a model that is no vision-language model (a causal LM) or whose config does
    not load. UnsupportedFamily for a vision-language ``model_type`` that is not in the family
    table, or whose family this library stack lacks."""
    if is_original(path, cache_dir):
        return FAMILIES["llava"]
    try:
        model_type = AutoConfig.from_pretrained(path, cache_dir=cache_dir).model_type
    except (OSError, ValueError):
        return None
    if model_type in FAMILIES or model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return family_of(model_type, stack(), where=f"--model_name_or_path {path}")
    return None


def other_family(path: str, cache_dir: str | None = None) -> Family | None:
    """The family of ``path`` when it is a supported vision-language family other than LLaVA-1.5's
    (whose own code paths stay as they are), else None."""
    family = checkpoint_family(path, cache_dir)
    return family if family is not None and family.model_type != "llava" else None


def run_family(cfg: TrainConfig) -> Family | None:
    """The family a run of ``cfg`` trains when it is not LLaVA-1.5: the one ``--vision_tower`` assembles
    (``--model_family``) or the checkpoint's (:func:`other_family`); None for LLaVA-1.5 or a causal LM."""
    if cfg.vision_tower:
        return None if cfg.model_family == "llava" else FAMILIES[cfg.model_family]
    return other_family(cfg.model_name_or_path, cfg.cache_dir)


def assembly_errors(cfg: TrainConfig) -> list[str]:
    """Why ``--model_family`` cannot apply to ``cfg`` (empty: it can): it names the family that
    ``--vision_tower`` assembles, or the family of the checkpoint it continues."""
    if cfg.model_family == "llava" or cfg.vision_tower:
        return []
    family = checkpoint_family(cfg.model_name_or_path, cfg.cache_dir)
    if family is not None and family.model_type == cfg.model_family:
        return []
    return [(f"--model_family {cfg.model_family} assembles a model from the causal LM --model_name_or_path and "
             f"--vision_tower: add --vision_tower (or continue from a {cfg.model_family} checkpoint)")]


def check_family_settings(family: Family, cfg: TrainConfig) -> list[str]:
    """What ``cfg`` asks of a checkpoint of ``family`` (not LLaVA-1.5) that it cannot do yet, as
    errors naming the flag (empty: none); the notes for the run, such as padded batches in place
    of ``--packing``, are :func:`family_notes`."""
    name = f"{family.title} ({family.model_type})"
    errors = []
    if cfg.vision_tower:
        errors.append(f"--vision_tower assembles a LLaVA-1.5 from a causal LM; {cfg.model_name_or_path} is already "
                      f"a {name}: drop --vision_tower")
    if cfg.pretrain_mm_mlp_adapter:
        errors.append(f"--pretrain_mm_mlp_adapter loads LLaVA-1.5's projector file; a {name} keeps its "
                      "projector in its checkpoint")
    if cfg.prompt_format in TEMPLATES and not family.llava_templates:
        errors.append(f"--version {cfg.version} is a LLaVA template; a {name} prompts with its processor's chat "
                      "template: --version chat_template")
    if cfg.peft:
        errors.append(f"--peft {cfg.peft}: prompt learning is for causal LMs and LLaVA-1.5, not yet a {name}")
    if not family.estimable:
        for flag in ("deepspeed", "per_device_train_batch_size"):
            if str(getattr(cfg, flag)) == "auto":
                errors.append(f"--{flag} auto is chosen from the memory estimate, which cannot estimate a {name} "
                              f"yet: give a value")
        if cfg.gradient_checkpointing == "auto":
            errors.append(f"--gradient_checkpointing auto is chosen from the memory estimate, which cannot estimate "
                          f"a {name} yet: True or False")
    return errors


def family_notes(family: Family, cfg: TrainConfig) -> list[str]:
    """What a run of ``cfg`` on ``family`` does differently from what it asked, said once."""
    if cfg.packing and not family.packs:
        return [f"--packing: {family.title} does not pack yet, batches are padded"]
    return []


def is_llava_checkpoint(path: str, cache_dir: str | None = None) -> bool:
    """True when ``path`` holds a LLaVA: HF format (config model_type 'llava') or LLaVA's original."""
    if is_original(path, cache_dir):
        return True
    try:
        return AutoConfig.from_pretrained(path, cache_dir=cache_dir).model_type == "llava"
    except (OSError, ValueError):
        return False


def is_text_only_run(cfg: TrainConfig) -> bool:
    """True when ``cfg`` trains a causal LM alone: no ``vision_tower`` and ``model_name_or_path``
    not a LLaVA checkpoint. ValueError when that model is no causal LM either."""
    if cfg.vision_tower or checkpoint_family(cfg.model_name_or_path, cfg.cache_dir) is not None:
        return False
    model_type = AutoConfig.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir).model_type
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedFamily(
            f"--model_name_or_path {cfg.model_name_or_path!r} (model_type {model_type!r}) is neither a supported "
            f"vision-language family ({', '.join(supported(stack()))}) nor a causal LM: give one of those, a causal LM "
            "(trained text only), or a causal LM and --vision_tower to assemble a LLaVA")
    return True


def load_tokenizer(cfg: TrainConfig, image_token: bool):
    """The LLM's tokenizer at ``model_max_length``, with a pad token (its unk or eos when it has
    none), and the ``<image>`` token added when ``image_token``."""
    tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir, use_fast=True)
    tokenizer.model_max_length = cfg.model_max_length
    if image_token and IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def build_model(cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The model and processor a run starts from.

    Either an existing HF-format LLaVA checkpoint (``model_name_or_path``), or a new LLaVA assembled
    from ``vision_tower`` + the causal LLM ``model_name_or_path`` with a fresh projector, optionally
    loaded from a LLaVA-original ``pretrain_mm_mlp_adapter`` file; a LLaVA-original checkpoint is
    assembled from its parts (``llava_original.as_parts``). Without ``vision_tower`` a causal LM is
    loaded alone (``AutoModelForCausalLM``), with its tokenizer as the processor.
    """
    cfg = as_parts(cfg)
    if errors := assembly_errors(cfg):
        raise ValueError("\n".join(errors))
    family = other_family(cfg.model_name_or_path, cfg.cache_dir)
    if family is not None:
        errors = check_family_settings(family, cfg)
        if errors:
            raise ValueError("\n".join(errors))
        model = AutoModelForImageTextToText.from_pretrained(
            cfg.model_name_or_path, **dtype_kwargs(dtype), cache_dir=cfg.cache_dir,
            attn_implementation=cfg.attn_implementation, **qlora_load_kwargs(cfg))
        return model, as_trained(load_auto_processor(cfg.model_name_or_path, cache_dir=cfg.cache_dir), cfg)
    if is_llava_checkpoint(cfg.model_name_or_path, cfg.cache_dir):
        model = load_llava(cfg.model_name_or_path, dtype, cache_dir=cfg.cache_dir, attn_implementation=cfg.attn_implementation,
                           **qlora_load_kwargs(cfg))
        processor = load_auto_processor(cfg.model_name_or_path, cache_dir=cfg.cache_dir)
    elif is_text_only_run(cfg):
        processor = load_tokenizer(cfg, image_token=False)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.model_name_or_path, **dtype_kwargs(dtype), cache_dir=cfg.cache_dir,
            attn_implementation=cfg.attn_implementation, **qlora_load_kwargs(cfg))
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.generation_config.pad_token_id = processor.pad_token_id
    else:
        model, processor = assemble(cfg, dtype)
    if cfg.pretrain_mm_mlp_adapter:
        load_mm_projector(model, cfg.pretrain_mm_mlp_adapter)
    return model, as_trained(processor, cfg)


def as_trained(processor, cfg: TrainConfig):
    """``processor`` set up as the run ``cfg`` uses it, and as it is saved with the model (final/,
    checkpoints, exports): the prompt format's chat template and the image aspect ratio applied by
    the image processor itself (a causal LM's tokenizer: the chat template only). Another family's
    processor keeps its own image processor, and its own chat template unless a LLaVA template is
    the prompt format."""
    if getattr(processor, "image_processor", None) is not None and not isinstance(processor, LlavaProcessor):
        if cfg.prompt_format in TEMPLATES:
            processor.chat_template = chat_template(cfg.prompt_format, tokenizer_of(processor))
        return processor
    template = chat_template(cfg.prompt_format, tokenizer_of(processor))
    if template:
        processor.chat_template = template
    if getattr(processor, "image_processor", None) is not None:
        processor.image_processor = image_processor_for(processor.image_processor, cfg.image_aspect_ratio)
    return processor


def _load_vision(path: str, cfg: TrainConfig, dtype: torch.dtype) -> torch.nn.Module:
    vision_cfg = _vision_config(cfg)
    full = AutoModel.from_pretrained(path, **dtype_kwargs(dtype), cache_dir=cfg.cache_dir, attn_implementation=cfg.attn_implementation)
    model = getattr(full, "vision_model", None)
    if model is not None and hasattr(full, "text_model"):
        # a full CLIP/SigLIP checkpoint: keep the vision half, wrapped as its *VisionModel class
        vision = AutoModel.from_config(vision_cfg, **dtype_kwargs(dtype), attn_implementation=cfg.attn_implementation)
        vision.vision_model.load_state_dict(model.state_dict())
        return vision
    return full


def _vision_config(cfg: TrainConfig):
    vcfg = AutoConfig.from_pretrained(cfg.vision_tower, cache_dir=cfg.cache_dir)
    return getattr(vcfg, "vision_config", None) or vcfg


def _select_strategy(vision_cfg, cfg: TrainConfig) -> tuple[str, bool]:
    """(vision_feature_select_strategy, has a CLS token): CLIP drops its CLS for 'patch' features."""
    has_cls = vision_cfg.model_type.startswith("clip")
    return ("default" if has_cls and cfg.mm_vision_select_feature == "patch" else "full"), has_cls


def load_processor(cfg: TrainConfig) -> tuple[LlavaProcessor, int]:
    """The processor a run uses and the image tokens per image, without loading any weights (a
    text-only run's tokenizer and 0; another family's processor and 0: its images' token counts
    depend on each image, and its processor tells them, ``llava_core.data.encoding.ProcessorEncoder``)."""
    cfg = as_parts(cfg, weights=False)
    if other_family(cfg.model_name_or_path, cfg.cache_dir) is not None:
        return as_trained(load_auto_processor(cfg.model_name_or_path, cache_dir=cfg.cache_dir), cfg), 0
    if is_llava_checkpoint(cfg.model_name_or_path, cfg.cache_dir):
        processor = load_auto_processor(cfg.model_name_or_path, cache_dir=cfg.cache_dir)
        config = AutoConfig.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir)
        vision_cfg, strategy = config.vision_config, config.vision_feature_select_strategy
    elif is_text_only_run(cfg):
        return load_tokenizer(cfg, image_token=False), 0
    elif cfg.model_family != "llava":
        return _anyres_processor(cfg), 0
    else:
        tokenizer = load_tokenizer(cfg, image_token=True)
        vision_cfg = _vision_config(cfg)
        strategy, has_cls = _select_strategy(vision_cfg, cfg)
        processor = LlavaProcessor(
            image_processor=AutoImageProcessor.from_pretrained(cfg.vision_tower, cache_dir=cfg.cache_dir,
                                                               **image_processor_kwargs()),
            tokenizer=tokenizer,
            patch_size=vision_cfg.patch_size,
            vision_feature_select_strategy=strategy,
            num_additional_image_tokens=1 if has_cls else 0,
            image_token=IMAGE_TOKEN,
            chat_template=getattr(tokenizer, "chat_template", None),
        )
    return processor, image_token_count(vision_cfg, strategy, processor.num_additional_image_tokens)


def grid_pinpoints(cfg: TrainConfig, vision_cfg) -> list[list[int]]:
    """The AnyRes resolutions: ``--image_grid_pinpoints``, or the family's scripts' grid at the vision
    tower's image size: LLaVA-NeXT's 1x2, 2x1, 2x2, 3x1, 1x3 tiles (336 -> up to 672 x 672),
    LLaVA-OneVision's (1x1)..(6x6) (384 -> up to 2304 x 2304)."""
    if cfg.image_grid_pinpoints:
        return parse_pinpoints(cfg.image_grid_pinpoints)
    s = vision_cfg.image_size
    if cfg.model_family == "llava_onevision":
        return [[i * s, j * s] for i in range(1, 7) for j in range(1, 7)]
    return [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [3 * s, s], [s, 3 * s]]


def _assembled_config(cfg: TrainConfig, vision_cfg, text_cfg,
                      **kwargs: Any) -> LlavaConfig | LlavaNextConfig | LlavaOnevisionConfig:
    """The config of the model ``--vision_tower`` and ``--model_family`` assemble from the two configs."""
    strategy, _ = _select_strategy(vision_cfg, cfg)
    common = {"vision_config": vision_cfg.to_dict() | {"model_type": vision_cfg.model_type},
              "text_config": text_cfg.to_dict() | {"model_type": text_cfg.model_type},
              "projector_hidden_act": "gelu" if cfg.mm_projector_type == "mlp2x_gelu" else "linear",
              "vision_feature_select_strategy": strategy, "vision_feature_layer": cfg.mm_vision_select_layer}
    if cfg.model_family == "llava_next":
        return LlavaNextConfig(**common, image_grid_pinpoints=grid_pinpoints(cfg, vision_cfg), **kwargs)
    if cfg.model_family == "llava_onevision":
        return LlavaOnevisionConfig(**common, image_grid_pinpoints=grid_pinpoints(cfg, vision_cfg),
                                    vision_aspect_ratio="anyres_max_9", **kwargs)
    return LlavaConfig(**common, **kwargs)


_ASSEMBLED_CLASSES = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration,
                      "llava_onevision": LlavaOnevisionForConditionalGeneration}


def _anyres_processor(cfg: TrainConfig) -> LlavaNextProcessor | LlavaOnevisionProcessor:
    """A LLaVA-NeXT or LLaVA-OneVision processor (``--model_family``) from the vision tower's image
    processor (its size, mean and std) and the LLM's tokenizer with ``<image>`` added (OneVision:
    ``<video>`` too), AnyRes at :func:`grid_pinpoints`. OneVision takes a tower without a CLS token
    (SigLIP), as its checkpoints do: its processor counts an image's tokens as a square of patches."""
    tokenizer = load_tokenizer(cfg, image_token=True)
    vision_cfg = _vision_config(cfg)
    strategy, has_cls = _select_strategy(vision_cfg, cfg)
    tower = AutoImageProcessor.from_pretrained(cfg.vision_tower, cache_dir=cfg.cache_dir, **image_processor_kwargs())
    s, template = vision_cfg.image_size, getattr(tokenizer, "chat_template", None)
    pinpoints, colours = grid_pinpoints(cfg, vision_cfg), {"image_mean": tower.image_mean, "image_std": tower.image_std}
    if cfg.model_family == "llava_next":
        images = image_processor_class("LlavaNextImageProcessor")(
            size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints, **colours)
        return LlavaNextProcessor(image_processor=images, tokenizer=tokenizer, patch_size=vision_cfg.patch_size,
                                  vision_feature_select_strategy=strategy, num_additional_image_tokens=int(has_cls),
                                  image_token=IMAGE_TOKEN, chat_template=template)
    if has_cls:
        raise ValueError(f"--model_family llava_onevision takes a vision tower without a CLS token (SigLIP), as "
                         f"LLaVA-OneVision does; --vision_tower {cfg.vision_tower} is a {vision_cfg.model_type}")
    from transformers import LlavaOnevisionVideoProcessor  # needs torchvision, as the processor does

    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([VIDEO_TOKEN], special_tokens=True)
    images = image_processor_class("LlavaOnevisionImageProcessor")(
        size={"height": s, "width": s}, image_grid_pinpoints=pinpoints, **colours)
    video = LlavaOnevisionVideoProcessor(size={"height": s, "width": s}, **colours)
    return LlavaOnevisionProcessor(image_processor=images, tokenizer=tokenizer, video_processor=video,
                                   num_image_tokens=(s // vision_cfg.patch_size) ** 2,
                                   vision_feature_select_strategy=strategy, chat_template=template,
                                   image_token=IMAGE_TOKEN, video_token=VIDEO_TOKEN, vision_aspect_ratio="anyres_max_9")


def assemble(cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, Any]:
    """A new model of ``--model_family`` (LLaVA-1.5, LLaVA-NeXT or LLaVA-OneVision) from a vision tower
    and a causal LLM, with a fresh projector (and the AnyRes families' image_newline, initialised as
    LLaVA-NeXT does) and the image token added to the tokenizer."""
    processor, n_image_tokens = load_processor(cfg)
    tokenizer = processor.tokenizer
    vision = _load_vision(cfg.vision_tower, cfg, dtype)
    llm = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path, **dtype_kwargs(dtype), cache_dir=cfg.cache_dir, attn_implementation=cfg.attn_implementation,
        **qlora_load_kwargs(cfg),
    )
    extra = ({"image_seq_length": n_image_tokens} if n_image_tokens else {}) | (
        {"video_token_index": tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)} if cfg.model_family == "llava_onevision" else {})
    config = _assembled_config(cfg, vision.config, llm.config, image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                               tie_word_embeddings=llm.config.tie_word_embeddings, **extra)
    with torch.device("meta"):
        model = _ASSEMBLED_CLASSES[cfg.model_family](config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    model.model.multi_modal_projector = type(model.model.multi_modal_projector)(config).to(dtype)
    if hasattr(model.model, "image_newline"):
        hidden = config.text_config.hidden_size
        model.model.image_newline = torch.nn.Parameter(torch.randn(hidden, dtype=dtype) / hidden ** 0.5)
    if cfg.mm_projector_type == "linear":
        init_linear_projector(model.model.multi_modal_projector)
    model.config._attn_implementation = cfg.attn_implementation
    model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def skeleton(cfg: TrainConfig) -> LlavaForConditionalGeneration | PreTrainedModel:
    """The run's model on the meta device, from configs only (no weights): for size and memory
    estimates (a causal LM for a text-only run)."""
    cfg = as_parts(cfg, weights=False)
    if other_family(cfg.model_name_or_path, cfg.cache_dir) is not None:
        with torch.device("meta"):
            return AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(cfg.model_name_or_path,
                                                                                      cache_dir=cfg.cache_dir))
    if is_llava_checkpoint(cfg.model_name_or_path, cfg.cache_dir):
        config = AutoConfig.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir)
    elif is_text_only_run(cfg):
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir))
    else:
        config = _assembled_config(cfg, _vision_config(cfg),
                                   AutoConfig.from_pretrained(cfg.model_name_or_path, cache_dir=cfg.cache_dir))
    with torch.device("meta"):
        return _ASSEMBLED_CLASSES.get(config.model_type, LlavaForConditionalGeneration)(config)


def init_linear_projector(projector: LlavaMultiModalProjector) -> None:
    """Make linear_2 the identity so the two-layer projector with a linear activation is one linear map."""
    with torch.no_grad():
        projector.linear_2.weight.copy_(torch.eye(projector.linear_2.weight.shape[0], dtype=projector.linear_2.weight.dtype))
        projector.linear_2.bias.zero_()


_PROJECTOR_KEYS = {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias", "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"}


def load_mm_projector(model: LlavaForConditionalGeneration, path: str) -> None:
    """Load a LLaVA-original ``mm_projector.bin`` (stage-1 output) into the projector."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--pretrain_mm_mlp_adapter {path}: no such file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}
    projector = model.model.multi_modal_projector
    if set(state) == {"weight", "bias"}:  # LLaVA 'linear'
        mapped = {"linear_1.weight": state["weight"], "linear_1.bias": state["bias"]}
        init_linear_projector(projector)
    elif set(state) == set(_PROJECTOR_KEYS):
        mapped = {_PROJECTOR_KEYS[k]: v for k, v in state.items()}
    else:
        raise ValueError(f"--pretrain_mm_mlp_adapter {path}: expected mm_projector.[0,2].weight/bias or mm_projector.weight/bias, found {sorted(state)}")
    own = projector.state_dict()
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"--pretrain_mm_mlp_adapter {path}: {k} has shape {tuple(v.shape)} but this model's projector needs "
                f"{tuple(own[k].shape)} (vision hidden {model.config.vision_config.hidden_size} -> LLM hidden "
                f"{model.config.text_config.hidden_size}): was it trained for another vision tower or LLM?"
            )
    with torch.no_grad():
        for k, v in mapped.items():
            own[k].copy_(v.to(own[k].dtype))


def projector_state_llava_format(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The projector weights under LLaVA-original key names (what stage 1 writes as mm_projector.bin)."""
    p = {k: v.detach().cpu().clone() for k, v in model.model.multi_modal_projector.state_dict().items()}
    if model.config.projector_hidden_act == "linear":
        w = p["linear_2.weight"] @ p["linear_1.weight"]
        b = p["linear_2.weight"] @ p["linear_1.bias"] + p["linear_2.bias"]
        return {"model.mm_projector.weight": w, "model.mm_projector.bias": b}
    inverse = {v: k for k, v in _PROJECTOR_KEYS.items()}
    return {f"model.mm_projector.{inverse[k]}": v for k, v in p.items()}


def load_for_inference(path: str, dtype: torch.dtype = torch.float32) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Load an HF-format LLaVA (e.g. a run's ``final/``) and its processor, or a causal LM and its tokenizer."""
    return load_pretrained(path, dtype).eval(), load_saved_processor(path)


def load_saved_processor(path: str | Path, model_dir: str | Path | None = None):
    """The processor saved in ``path`` (a vision-language model's), or the tokenizer (a causal LM's);
    which of the two is read from the model's config in ``model_dir`` (default ``path``)."""
    vlm = checkpoint_family(str(model_dir or path)) is not None
    return load_auto_processor(path) if vlm else AutoTokenizer.from_pretrained(path)


def load_pretrained(path: str | Path, dtype: torch.dtype | None = torch.float32, **kwargs: Any) -> PreTrainedModel:
    """The HF-format model in ``path``: a LLaVA (:func:`load_llava`), a model of another family
    (``AutoModelForImageTextToText``) or a causal LM without a vision part."""
    if other_family(str(path)) is not None:
        return AutoModelForImageTextToText.from_pretrained(path, **dtype_kwargs(dtype), **kwargs)
    if is_llava_checkpoint(str(path)):
        return load_llava(path, dtype, **kwargs)
    return AutoModelForCausalLM.from_pretrained(path, **dtype_kwargs(dtype), **kwargs)


def load_llava(path: str | Path, dtype: torch.dtype | None = torch.float32, **kwargs: Any) -> LlavaForConditionalGeneration:
    """An HF-format LLaVA from ``path``, written by either library stack (``compat.llava_load_kwargs``)."""
    return LlavaForConditionalGeneration.from_pretrained(path, **dtype_kwargs(dtype), **llava_load_kwargs(path), **kwargs)

"""LLaVA's original checkpoint format (haotian-liu/LLaVA ``LlavaLlamaForCausalLM``), in and out.

A LLaVA-original checkpoint is a Llama (or Mistral) causal-LM folder whose config.json also holds
LLaVA's fields (``mm_vision_tower``, ``mm_projector_type``, ``mm_hidden_size``, ...) and whose weights
also hold the projector (``model.mm_projector.*``) and, when the tower was trained, the vision tower
(``model.vision_tower.vision_tower.*``). As in LLaVA's ``CLIPVisionTower``, the tower is otherwise
loaded from the model named by ``mm_vision_tower``, and checkpoint tower weights are used only when
``unfreeze_mm_vision_tower`` is set.

In: :func:`as_parts` turns a run config whose ``--model_name_or_path`` is such a checkpoint into the
config of a new LLaVA assembled from its parts (``llava_core.model.assemble``): the LLM (a folder of
links to the checkpoint's files with a plain LLM config.json), the vision tower and the projector
(``mm_projector.bin``, LLaVA's stage-1 format), with the checkpoint's projector and feature settings.
Out: :func:`original_config` and :func:`original_weights` give config.json and the weights under
LLaVA's names (``llava_core.model.export.save_llava_original`` writes them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version

from llava_core.compat import TORCH
from llava_core.config import TrainConfig
from llava_core.io import atomic_write_json
from llava_core.model.hub import (
    ModelNotFoundError,
    hub_unavailable,
    locate,
    looks_local,
)

# LLaVA's architecture -> (the LLM's model_type and class, LLaVA's model_type as its code writes it)
ARCHITECTURES = {"LlavaLlamaForCausalLM": ("llama", "LlamaForCausalLM", "llava_llama"),
                 "LlavaMistralForCausalLM": ("mistral", "MistralForCausalLM", "llava_mistral")}
_MODEL_TYPES = {"llava": "LlavaLlamaForCausalLM", "llava_llama": "LlavaLlamaForCausalLM",
                "llava_mistral": "LlavaMistralForCausalLM"}
# config fields LLaVA's train.py adds besides the mm_* ones
_LLAVA_FIELDS = {"use_mm_proj", "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_padding_side",
                 "tokenizer_model_max_length", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
                 "unfreeze_mm_vision_tower", "tune_mm_vision_resampler", "s2", "s2_scales"}
PROJECTOR_PREFIX = "model.mm_projector."
TOWER_PREFIX = "model.vision_tower.vision_tower."
PROJECTORS = {"mlp2x_gelu": "gelu", "linear": "linear"}
"""LLaVA's ``mm_projector_type`` -> transformers' ``projector_hidden_act`` (the HF projector has two layers)."""
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE = ("model.safetensors", "pytorch_model.bin")


def read_config(path: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """The config.json of the LLaVA-original checkpoint ``path`` (folder or hub id), or None when
    ``path`` is not one (no ``mm_vision_tower``, or an HF-format LLaVA with a ``text_config``)."""
    from transformers.utils import cached_file

    if looks_local(str(path)):
        if not Path(path).expanduser().is_dir():
            return None
    else:
        hub_unavailable()  # one bounded probe: offline from here on when the hub does not answer
    try:
        file = cached_file(str(path), "config.json", cache_dir=cache_dir, _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError):
        return None
    if file is None:
        return None
    try:
        config = json.loads(Path(file).read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "mm_vision_tower" in config and "text_config" not in config else None


def is_original(path: str, cache_dir: str | None = None) -> bool:
    """True when ``path`` holds a LLaVA-original checkpoint."""
    return read_config(path, cache_dir) is not None


def _architecture(config: dict[str, Any], where: str) -> str:
    """LLaVA's class for ``config``; ValueError for what cannot be converted."""
    arch = next(iter(config.get("architectures") or []), None) or _MODEL_TYPES.get(config.get("model_type", ""))
    if arch not in ARCHITECTURES:
        raise ValueError(f"{where}: LLaVA-original {arch or config.get('model_type')} checkpoints cannot be "
                         f"converted (supported: {', '.join(ARCHITECTURES)})")
    projector = config.get("mm_projector_type", "linear")
    if projector not in PROJECTORS:
        raise ValueError(f"{where}: mm_projector_type {projector!r} has no transformers LLaVA equivalent "
                         f"(supported: {', '.join(PROJECTORS)})")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise ValueError(f"{where}: mm_patch_merge_type {config['mm_patch_merge_type']!r} (LLaVA-NeXT's anyres) "
                         "is not supported, only flat (LLaVA-1.5)")
    if config.get("mm_use_im_start_end"):
        raise ValueError(f"{where}: mm_use_im_start_end is set; transformers' LLaVA has no image start/end tokens")
    return arch


def llm_config(config: dict[str, Any], where: str = "config.json") -> dict[str, Any]:
    """The plain LLM config inside a LLaVA-original config (LLaVA's fields removed)."""
    text_type, text_class, _ = ARCHITECTURES[_architecture(config, where)]
    kept = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in _LLAVA_FIELDS}
    return kept | {"model_type": text_type, "architectures": [text_class]}


def as_parts(cfg: TrainConfig, weights: bool = True) -> TrainConfig:
    """``cfg`` unchanged, unless ``--model_name_or_path`` is a LLaVA-original checkpoint: then the
    config of a new LLaVA assembled from that checkpoint's LLM, vision tower and projector
    (``weights=False``: the configs and tokenizer only, for the processor and size estimates).

    The tower is ``--vision_tower`` when given (e.g. a local copy), else the checkpoint's
    ``mm_vision_tower``, located offline as every model flag is; the projector type, vision layer and
    feature come from the checkpoint.
    """
    config = read_config(cfg.model_name_or_path, cfg.cache_dir)
    if config is None:
        return cfg
    where = f"--model_name_or_path {cfg.model_name_or_path}"
    _architecture(config, where)
    if cfg.pretrain_mm_mlp_adapter:
        raise ValueError(f"{where} is a LLaVA-original checkpoint, which holds its projector: "
                         "leave out --pretrain_mm_mlp_adapter")
    folder = Path(locate(cfg.model_name_or_path, "model_name_or_path", cfg.cache_dir))
    if not folder.is_dir():  # a hub id while the hub answers
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(cfg.model_name_or_path, cache_dir=cfg.cache_dir,
                                        allow_patterns=["*.json", "*.model", "*.txt"]
                                        + (["*.safetensors", "*.bin"] if weights else [])))
    tower = cfg.vision_tower or config["mm_vision_tower"]
    try:
        tower = locate(tower, "vision_tower", cfg.cache_dir)
    except ModelNotFoundError as e:
        if cfg.vision_tower:
            raise
        raise ModelNotFoundError(f"{where}: its config.json names the vision tower mm_vision_tower={tower}, "
                                 f"which cannot be found ({e}); or pass --vision_tower with a copy of it") from None
    parts = _parts_folder(folder, config, tower, weights)
    if (parts / "vision_tower").is_dir():
        tower = str(parts / "vision_tower")
    return dataclasses.replace(
        cfg, model_name_or_path=str(parts), vision_tower=tower,
        pretrain_mm_mlp_adapter=str(parts / "mm_projector.bin") if weights else None,
        mm_projector_type=config.get("mm_projector_type", "linear"),
        mm_vision_select_layer=int(config.get("mm_vision_select_layer", -1)),
        mm_vision_select_feature=config.get("mm_vision_select_feature", "patch"))


def _parts_folder(folder: Path, config: dict[str, Any], tower: str, weights: bool = True) -> Path:
    """A folder beside the machine's temp files holding the checkpoint's LLM (links to its files, a
    plain LLM config.json), its projector as ``mm_projector.bin`` and, when LLaVA would load the
    checkpoint's own tower weights (``unfreeze_mm_vision_tower``), that tower as ``vision_tower/``
    (``weights=False``: the links to its configs and tokenizer and the LLM config only). Made once
    per checkpoint (its path, config and tower) and reused; the first of the processes that make it
    at once (the ranks of a node) wins, the others take that one."""
    key = hashlib.sha256(json.dumps([str(folder.resolve()), config, tower], sort_keys=True).encode()).hexdigest()[:16]
    key += "" if weights else "-configs"
    target = Path(tempfile.gettempdir()) / f"llava-original-{os.getuid()}" / key
    if _complete(target):
        return target
    own_tower = bool(config.get("unfreeze_mm_vision_tower"))
    state = read_weights(folder, (PROJECTOR_PREFIX, TOWER_PREFIX) if own_tower else (PROJECTOR_PREFIX,)) if weights else {}
    projector = {k: v for k, v in state.items() if k.startswith(PROJECTOR_PREFIX)}
    if weights and not projector:
        raise ValueError(f"{folder}: no {PROJECTOR_PREFIX}* weights in this LLaVA-original checkpoint")
    tower_weights = {k[len(TOWER_PREFIX):]: v for k, v in state.items() if k.startswith(TOWER_PREFIX)}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=target.parent))
    try:
        for f in folder.iterdir():
            if f.is_file() and f.name != "config.json" and (weights or not _holds_weights(f.name)):
                (tmp / f.name).symlink_to(f.resolve())
        atomic_write_json(tmp / "config.json", llm_config(config, str(folder)))
        if projector:
            torch.save(projector, tmp / "mm_projector.bin")
        if tower_weights:
            from transformers import AutoConfig, AutoImageProcessor

            from llava_core.compat import image_processor_kwargs

            vision = AutoConfig.from_pretrained(tower)
            write_tower(tmp / "vision_tower", getattr(vision, "vision_config", None) or vision,
                        AutoImageProcessor.from_pretrained(tower, **image_processor_kwargs()), tower_weights)
        if target.exists() and not _complete(target):  # left over, its files since removed
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target):  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(parts: Path) -> bool:
    """True when the parts folder exists (it appears whole, by a rename) and its links still lead to files."""
    return (parts / "config.json").is_file() and all(f.exists() for f in parts.iterdir())


def _holds_weights(name: str) -> bool:
    return name.endswith((".safetensors", ".bin")) or name in _INDEXES


def write_tower(out: Path, vision_config: Any, image_processor: Any, weights: dict[str, torch.Tensor]) -> None:
    """A CLIP vision model folder as transformers 4.x writes it (LLaVA's library and both of ours read
    it): the vision config, the image processor, ``weights`` named ``vision_model.*``."""
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    atomic_write_json(out / "config.json", vision_config.to_dict() | {"model_type": vision_config.model_type,
                                                                     "architectures": ["CLIPVisionModel"]})
    image_processor.save_pretrained(out)
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "model.safetensors", metadata={"format": "pt"})


def read_weights(folder: Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint folder (sharded or not, safetensors or torch) whose names start
    with one of ``prefixes``, reading only the shards that hold them."""
    from safetensors import safe_open

    index = next((folder / n for n in _INDEXES if (folder / n).is_file()), None)
    if index is not None:
        shards = sorted({f for k, f in json.loads(index.read_text())["weight_map"].items() if k.startswith(prefixes)})
    else:
        shards = [n for n in _SINGLE if (folder / n).is_file()][:1]
        if not shards:
            raise FileNotFoundError(f"{folder}: no weights ({', '.join(_INDEXES + _SINGLE)})")
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        path = folder / shard
        if shard.endswith(".safetensors"):
            with safe_open(str(path), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)})
        else:
            if TORCH < Version("2.6"):  # as transformers refuses it (CVE-2025-32434)
                raise ValueError(f"{path}: torch {TORCH} cannot load .bin weights safely (CVE-2025-32434, fixed in "
                                 "torch 2.6): use the checkpoint's safetensors version, or convert it once on a stack with "
                                 "torch >= 2.6 (python -m jobs.export CHECKPOINT --out DIR writes safetensors)")
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            out.update({k: v for k, v in state.items() if k.startswith(prefixes)})
    return out


def tower_name(path: str, cache_dir: str | None = None) -> str | None:
    """``mm_vision_tower`` of the LLaVA-original checkpoint ``path``, or None when it is not one."""
    config = read_config(path, cache_dir)
    return config["mm_vision_tower"] if config else None


def _llava_4x_spelling(text: dict[str, Any]) -> dict[str, Any]:
    """An LLM config dict in the field names of transformers 4.x, which LLaVA's code runs on
    (transformers 5 writes ``dtype`` and ``rope_parameters``; 4.x reads ``torch_dtype``,
    ``rope_theta`` and ``rope_scaling``)."""
    text = dict(text)
    if "dtype" in text:
        text["torch_dtype"] = text.pop("dtype")
    rope = text.pop("rope_parameters", None)
    if rope:
        rope = dict(rope)
        text["rope_theta"] = rope.pop("rope_theta", 10000.0)
        text["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    return text


def original_config(model_config: Any, cfg: TrainConfig, mm_vision_tower: str, vocab_size: int) -> dict[str, Any]:
    """config.json of the HF-format LLaVA ``model_config`` in LLaVA's format: the LLM's fields and the
    fields LLaVA's ``initialize_vision_modules`` and train.py write, the run's settings from ``cfg``.
    ``unfreeze_mm_vision_tower`` is set: the written tower weights are the ones LLaVA loads."""
    text, vision = model_config.text_config, model_config.vision_config
    arch = next((a for a, (t, _, _) in ARCHITECTURES.items() if t == text.model_type), None)
    if arch is None:
        raise ValueError(f"LLaVA's original code has no {text.model_type} language model "
                         f"(only {', '.join(t for t, _, _ in ARCHITECTURES.values())})")
    if vision.model_type != "clip_vision_model":
        raise ValueError(f"LLaVA's original code loads CLIP vision towers only, this model has {vision.model_type}")
    if not isinstance(model_config.vision_feature_layer, int):
        raise ValueError(f"vision_feature_layer {model_config.vision_feature_layer}: LLaVA selects one layer")
    act = {v: k for k, v in PROJECTORS.items()}.get(model_config.projector_hidden_act)
    if act is None:
        raise ValueError(f"projector_hidden_act {model_config.projector_hidden_act!r} has no LLaVA projector type")
    fields = {k: v for k, v in _llava_4x_spelling(text.to_dict()).items() if not k.startswith("_")}
    return fields | {
        "_name_or_path": cfg.model_name_or_path, "architectures": [arch], "model_type": ARCHITECTURES[arch][2],
        "vocab_size": vocab_size, "use_cache": True,
        "mm_vision_tower": mm_vision_tower, "use_mm_proj": True, "mm_projector_type": act,
        "mm_hidden_size": vision.hidden_size, "mm_vision_select_layer": model_config.vision_feature_layer,
        "mm_vision_select_feature": "patch" if model_config.vision_feature_select_strategy == "default" else "cls_patch",
        "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad" if cfg.image_aspect_ratio == "pad" else "square",
        "tokenizer_padding_side": "right", "tokenizer_model_max_length": cfg.model_max_length,
        "tune_mm_mlp_adapter": cfg.tune_mm_mlp_adapter, "freeze_mm_mlp_adapter": cfg.freeze_mm_mlp_adapter,
        "unfreeze_mm_vision_tower": True, "mm_use_im_start_end": False, "mm_projector_lr": cfg.mm_projector_lr,
        "mm_use_im_patch_token": False,
    }


def original_weights(model: Any) -> dict[str, torch.Tensor]:
    """The LLM and vision tower weights of an HF-format LLaVA under LLaVA's names (``model.*``,
    ``lm_head.weight``, ``model.vision_tower.vision_tower.vision_model.*``); the projector's are
    ``llava_core.model.projector_state_llava_format``."""
    out = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    out["lm_head.weight"] = model.lm_head.weight
    tower = model.model.vision_tower
    # transformers 5's CLIPVisionModel holds its layers flat, 4.x (and LLaVA) under vision_model
    inner = "" if hasattr(tower, "vision_model") else "vision_model."
    out |= {f"{TOWER_PREFIX}{inner}{k}": v for k, v in tower.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in out.items()}

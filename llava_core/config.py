"""The training configuration: one flat dataclass that speaks LLaVA's argument names.

Field names are those of LLaVA's ``train.py`` (ModelArguments, DataArguments, TrainingArguments),
so a user's ``scripts/v1_5/*.sh`` flags map one to one. Any other ``transformers.TrainingArguments``
field goes into ``training_args`` unchanged.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, TypeVar

from llava_core.data.conversation import PROMPT_VERSIONS
from llava_core.data.formats import DATA_FORMATS

PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
PEFT_METHODS = ("ptuning", "prompt_tuning", "prefix_tuning")
"""peft's prompt-learning methods (--peft); LoRA is --lora_enable."""
ASPECT_RATIOS = ("pad", "resize", "crop")
ASSEMBLED_FAMILIES = ("llava", "llava_next", "llava_onevision")
"""The families ``--vision_tower`` assembles with a causal LM (``--model_family``)."""
T = TypeVar("T")


def parse_pinpoints(text: str) -> list[list[int]]:
    """``--image_grid_pinpoints`` as [[height, width], ...]; ValueError naming the flag when it is no
    list of pairs of positive integers."""
    try:
        value = ast.literal_eval(text) if isinstance(text, str) else text
        pairs = [[int(h), int(w)] for h, w in value]
    except (ValueError, SyntaxError, TypeError) as e:
        raise ValueError(f"--image_grid_pinpoints {text!r}: expected (height, width) pairs such as "
                         f'"[(336, 672), (672, 336)]" ({e})') from None
    if not pairs or any(h < 1 or w < 1 for h, w in pairs):
        raise ValueError(f"--image_grid_pinpoints {text!r}: expected at least one pair of positive sizes")
    return pairs


class Settings:
    """Base of the typed settings dataclasses (a job kind's ``settings_class``): a plain dict for
    ``config.yaml`` and back, CLI/YAML values coerced to the annotated field types."""

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], values: dict[str, Any]) -> T:
        """Build from flags, coercing CLI/YAML values to the field types; unknown names are an error."""
        return typed_from_dict(cls, values)


@dataclass
class TrainConfig(Settings):
    """Everything one training run needs. Defaults follow LLaVA-1.5."""

    # --- model -------------------------------------------------------------------------------
    model_name_or_path: str = ""
    """Causal LLM (hub id or local path), or an HF-format LLaVA checkpoint to continue from."""
    vision_tower: str | None = None
    """CLIP/SigLIP-like vision model or full CLIP model (hub id or local path)."""
    version: str = "v1"
    """Prompt format, LLaVA's template names: plain (stage 1), v1 = vicuna_v1 (LLaVA-1.5), llava_v1,
    llava_llama_2, mistral_instruct, chatml_direct; alpaca (Stanford Alpaca's prompt); or chat_template (the tokenizer's own)."""
    mm_projector_type: str = "mlp2x_gelu"
    """Projector between vision features and LLM embeddings: linear or mlp2x_gelu."""
    mm_vision_select_layer: int = -2
    """Which vision hidden layer feeds the projector (LLaVA-1.5: -2)."""
    mm_vision_select_feature: str = "patch"
    """patch: drop the CLS token (CLIP); cls_patch: keep it."""
    pretrain_mm_mlp_adapter: str | None = None
    """A LLaVA-original stage-1 ``mm_projector.bin`` to load into the projector."""
    tune_mm_mlp_adapter: bool = False
    """Stage 1: train the projector only."""
    freeze_backbone: bool = False
    """Keep the LLM frozen (LLaVA's flag)."""
    freeze_mm_mlp_adapter: bool = False
    """Keep the projector frozen."""
    unfreeze_mm_vision_tower: bool = False
    """Also train the vision tower (LLaVA-NeXT's flag)."""
    mm_vision_tower_lr: float | None = None
    """Learning rate of the vision tower when it is trained (default: learning_rate)."""
    train_modules: list[str] | None = None
    """Custom freeze plan: only parameters whose names match one of these regexes train (e.g. lm_head)."""
    mm_use_im_start_end: bool = False
    """LLaVA-1.5 uses False; transformers' LLaVA has no image start/end tokens."""
    mm_use_im_patch_token: bool = False
    """LLaVA-1.5 uses False; transformers' LLaVA has no patch token."""
    mm_patch_merge_type: str = "flat"
    """Only flat (LLaVA-1.5); LLaVA-NeXT's spatial_unpad is --model_family llava_next."""
    model_family: str = "llava"
    """The family --vision_tower assembles with the causal LM --model_name_or_path: llava (LLaVA-1.5),
    llava_next (LLaVA-NeXT: AnyRes tiles at --image_grid_pinpoints, unpadded, rows ended by a trained
    image_newline) or llava_onevision (the same with anyres_max_9, a SigLIP-like tower); a checkpoint's
    family is read from its config."""
    image_grid_pinpoints: str | None = None
    """The AnyRes resolutions, (height, width) pairs as LLaVA-NeXT's scripts write them, e.g.
    "[(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]"; default: the family's grid at the
    vision tower's image size (LLaVA-NeXT's above, LLaVA-OneVision's (1x1)..(6x6))."""
    attn_implementation: str = "sdpa"
    """Attention kernel: sdpa, eager, or flash_attention_2 (if installed)."""
    model_max_length: int = 2048
    """Maximum tokens per sample after image-token expansion; longer samples are never truncated silently."""
    cache_dir: str | None = None
    """Hugging Face cache folder."""

    # --- LoRA --------------------------------------------------------------------------------
    lora_enable: bool = False
    """Train LoRA adapters on the LLM's linear layers (never the vision tower)."""
    lora_r: int = 64
    """LoRA rank (LLaVA-1.5 LoRA: 128)."""
    lora_alpha: int = 16
    """LoRA scaling numerator: updates are scaled by lora_alpha / lora_r (LLaVA-1.5 LoRA: 256)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_bias: str = "none"
    """Which biases train with LoRA: none, all or lora_only (peft)."""
    lora_weight_path: str = ""
    """Accepted for LLaVA compatibility; unused (LLaVA never reads it either)."""
    mm_projector_lr: float | None = None
    """Learning rate of the projector (LLaVA LoRA: 2e-5); default learning_rate."""
    peft: str | None = None
    """Prompt learning through peft instead of LoRA: ptuning (P-tuning, a prompt encoder), prompt_tuning
    or prefix_tuning; the model stays frozen, --num_virtual_tokens are learnt. Cannot pack (rows are padded)."""
    num_virtual_tokens: int = 20
    """Virtual tokens that --peft prepends to every row."""
    bits: int = 16
    """Weight bits of the LLM while training: 16, or 4/8 for QLoRA (LoRA over bitsandbytes-quantized
    weights; NVIDIA GPUs only; needs --lora_enable True)."""
    double_quant: bool = True
    """QLoRA 4-bit: also quantize the quantization constants (LLaVA's --double_quant)."""
    quant_type: str = "nf4"
    """QLoRA 4-bit data type: nf4 or fp4 (LLaVA's --quant_type)."""

    # --- data --------------------------------------------------------------------------------
    data_path: str = ""
    """LLaVA JSON or JSONL file (or several, comma-separated); alpaca, sharegpt, OpenAI messages and
    data-juicer records too (--data_format)."""
    data_format: str = "auto"
    """Record format of --data_path: auto (detected per file), llava, alpaca, sharegpt, messages or
    datajuicer; converted to LLaVA's conversations on read (llava_core.data.formats)."""
    image_folder: str = ""
    """Folder that the records' ``image`` paths are relative to."""
    image_aspect_ratio: str = "pad"
    """pad (to a square with the processor's mean colour, as LLaVA), resize, or crop."""
    lazy_preprocess: bool = True
    """Accepted for LLaVA compatibility; data is always loaded lazily."""
    is_multimodal: bool = True
    """Accepted for LLaVA compatibility; a model without a vision part (any causal LM) trains text only."""
    group_by_modality_length: bool = False
    """Batches of image samples and text-only samples, each grouped by length (LLaVA's sampler)."""
    on_bad_sample: str = "fail"
    """fail: stop before training with the full list of bad samples; skip: drop and count them."""
    check_images: str = "decode"
    """How hard validation looks at images: exists, open (header), verify (PIL's verify: PNG
    checksums), or decode (all the compressed data: finds truncated and corrupt JPEG/PNG files)."""
    allow_images_outside_folder: bool = False
    """Accept image paths that leave --image_folder (absolute, or through ``..``); refused by default."""

    # --- training (the HF TrainingArguments users pass in LLaVA scripts) ----------------------
    output_dir: str = ""
    """The job directory: checkpoints, final/, metrics (jobs.submit fills it)."""
    num_train_epochs: float = 1.0
    """Passes over the data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Optimizer steps to train; -1: from num_train_epochs."""
    per_device_train_batch_size: int | str = 16
    """Samples per process and micro step; auto: the largest that fits the GPU at the same samples per
    process and optimizer step (chosen by jobs.submit or the job's ranks, llava_core.train.micro_batch)."""
    per_device_eval_batch_size: int = 4
    """Samples per process in evaluation passes."""
    gradient_accumulation_steps: int = 1
    """Micro steps per optimizer step (global batch = per device x this x processes)."""
    learning_rate: float = 2e-5
    """Peak learning rate (LLaVA-1.5: 1e-3 stage 1, 2e-5 stage 2, 2e-4 LoRA)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming up the learning rate."""
    warmup_steps: int = 0
    """Warm-up steps; wins over warmup_ratio when > 0."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name: cosine, linear, constant, constant_with_warmup..."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    logging_steps: int = 1
    """Steps between logged metrics (metrics.jsonl, wandb, TensorBoard)."""
    save_strategy: str = "steps"
    """When checkpoints are written: steps, epoch or no."""
    save_steps: int = 50000
    """Steps between checkpoints (LLaVA-1.5: 50000, i.e. none but the stop checkpoint)."""
    save_total_limit: int | None = 1
    """Checkpoints kept (older ones are deleted); None keeps all."""
    evaluation_strategy: str = "no"
    """When the Trainer evaluates: no, steps or epoch."""
    bf16: bool = False
    """bfloat16 mixed precision (turned into fp16 on cards without bf16, with a warning)."""
    fp16: bool = False
    """float16 mixed precision."""
    tf32: bool | None = None
    """TF32 matmuls on NVIDIA Ampere and newer; None: the platform's default."""
    gradient_checkpointing: bool | str = False
    """True, False, or auto: checkpoint only the decoder layers the memory estimate needs (llava_core.train.fast_path)."""
    packing: bool = False
    """Pack each batch into one padding-free row, attention kept within each sample (llava_core.train.packing)."""
    compile_layers: bool = False
    """torch.compile each decoder layer (llava_core.train.fast_path)."""
    dataloader_num_workers: int = 0
    """Data loader worker processes per rank."""
    report_to: str = "none"
    """Where metrics go besides metrics.jsonl: none, wandb, tensorboard (comma-separated)."""
    run_name: str | None = None
    """The run's name in wandb/TensorBoard."""
    deepspeed: str | dict | None = None
    """ZeRO config: the config itself (jobs.submit resolves zero2, zero2_offload, zero3, zero3_offload
    or a JSON path to it once, at submit; ``auto``: chosen by memory, jobs.zero_choice), or a JSON
    path when called as a library."""
    seed: int = 42
    """Seed of the new weights, the data order and dropout."""
    optim: str = "adamw_torch"
    """transformers optimizer name (adamw_torch, adamw_torch_fused, adafactor...)."""
    remove_unused_columns: bool = False
    """Accepted for LLaVA compatibility; always False (the batches carry images)."""
    training_args: dict[str, Any] = field(default_factory=dict)
    """Any other transformers.TrainingArguments field, passed through unchanged."""

    def __post_init__(self) -> None:
        if self.version not in PROMPT_VERSIONS:
            raise ValueError(f"--version {self.version!r}: use one of {sorted(PROMPT_VERSIONS)}")
        if self.mm_projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"--mm_projector_type {self.mm_projector_type!r}: use one of {PROJECTOR_TYPES}")
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"--image_aspect_ratio {self.image_aspect_ratio!r}: use one of {ASPECT_RATIOS}")
        if self.on_bad_sample not in ("fail", "skip"):
            raise ValueError(f"--on_bad_sample {self.on_bad_sample!r}: use fail or skip")
        if self.mm_use_im_start_end or self.mm_use_im_patch_token:
            raise ValueError(
                "--mm_use_im_start_end/--mm_use_im_patch_token True are not supported: transformers' "
                "LlavaForConditionalGeneration has no image start/end/patch tokens (LLaVA-1.5 uses False)"
            )
        if self.mm_patch_merge_type != "flat":
            raise ValueError("--mm_patch_merge_type: only 'flat' (LLaVA-1.5) is supported")
        if self.model_family not in ASSEMBLED_FAMILIES:
            raise ValueError(f"--model_family {self.model_family!r}: use one of {', '.join(ASSEMBLED_FAMILIES)}")
        if self.image_grid_pinpoints is not None:
            parse_pinpoints(self.image_grid_pinpoints)
        if self.bits not in (4, 8, 16):
            raise ValueError(f"--bits {self.bits}: use 16, or 4/8 for QLoRA")
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(f"--quant_type {self.quant_type!r}: use nf4 or fp4")
        if self.mm_vision_select_feature not in ("patch", "cls_patch"):
            raise ValueError("--mm_vision_select_feature: use patch or cls_patch")
        if isinstance(self.per_device_train_batch_size, str):
            word = self.per_device_train_batch_size.strip().lower()
            if word != "auto" and not word.isdigit():
                raise ValueError(f"--per_device_train_batch_size {self.per_device_train_batch_size!r}: use a number or auto")
            self.per_device_train_batch_size = "auto" if word == "auto" else int(word)
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "model_max_length"):
            if getattr(self, name) == "auto":
                continue
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.data_format not in DATA_FORMATS:
            raise ValueError(f"--data_format {self.data_format!r}: use one of {', '.join(DATA_FORMATS)}")
        if self.peft is not None and self.peft not in PEFT_METHODS:
            raise ValueError(f"--peft {self.peft!r}: use one of {', '.join(PEFT_METHODS)} (LoRA is --lora_enable True)")
        if self.peft and self.lora_enable:
            raise ValueError(f"--peft {self.peft} and --lora_enable True: pick one adapter")
        if self.peft and self.num_virtual_tokens < 1:
            raise ValueError(f"--num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}")
        if self.peft and self.bits != 16:
            raise ValueError(f"--peft {self.peft} with --bits {self.bits}: quantized training is QLoRA (--lora_enable True)")
        if isinstance(self.gradient_checkpointing, str):
            words = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "auto": "auto"}
            if self.gradient_checkpointing.lower() not in words:
                raise ValueError(f"--gradient_checkpointing {self.gradient_checkpointing!r}: use True, False or auto")
            self.gradient_checkpointing = words[self.gradient_checkpointing.lower()]
        if self.peft == "prefix_tuning" and self.gradient_checkpointing is True:
            raise ValueError("--peft prefix_tuning does not work with gradient checkpointing (peft refuses it): "
                             "pass --gradient_checkpointing False (or auto, which checkpoints nothing under prefix tuning)")

    @property
    def packed(self) -> bool:
        """Whether batches are packed: --packing, unless --peft (its virtual tokens go per padded row)."""
        return bool(self.packing) and not self.peft

    @property
    def prompt_format(self) -> str:
        """The normalised prompt format name."""
        return PROMPT_VERSIONS[self.version]



DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def check_dpo_loss(beta: float, loss_type: str) -> None:
    """ValueError naming the flag when ``beta`` or ``loss_type`` cannot make a preference loss."""
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"--loss_type {loss_type!r}: unknown DPO loss_type {loss_type!r}; use one of "
                         f"{', '.join(DPO_LOSS_TYPES)}")
    if beta <= 0:
        raise ValueError(f"--beta {beta}: DPO beta must be > 0 (HA-DPO's recipe uses 0.1)")


@dataclass
class DPOConfig(TrainConfig):
    """A DPO run (llava_core.train.dpo): the training options plus the preference loss's."""

    beta: float | None = None
    """KL strength of the preference loss: required (HA-DPO's recipe uses 0.1, its code defaults to 0.5)."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO), ipo (IPO, on per-token averaged log-probs as TRL) or hinge (SLiC)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta is None:
            raise ValueError("--beta is required for DPO (HA-DPO's recipe uses 0.1)")
        check_dpo_loss(self.beta, self.loss_type)
        if self.packing:
            raise ValueError("--packing True is for supervised training: DPO batches pair a chosen and a rejected "
                             "answer per prompt (drop --packing)")


def typed_from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """A settings dataclass from flags (CLI/YAML values coerced to the annotated field types);
    unknown names are an error naming the closest fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in names]
    if unknown:
        raise ValueError("; ".join(unknown_key_message(k, names) for k in unknown))
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(v, hints[k], k) for k, v in values.items()})


def did_you_mean(word: str, choices: Iterable[str], prefix: str = "--", cutoff: float = 0.6) -> str:
    """'; did you mean --y, --z?' for the choices close to ``word``; '' when none is."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def unknown_key_message(key: str, valid: set[str] | list[str]) -> str:
    """'unknown flag --x; did you mean --y, --z?'"""
    return f"unknown flag --{key}{did_you_mean(key, valid)}"


def coerce(value: Any, hint: Any, name: str) -> Any:
    """Convert a CLI/YAML value to the annotated type of field ``name``."""
    if value is None or (name == "deepspeed" and isinstance(value, dict)):
        return value
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is typing.Union or (args and origin is not list and origin is not dict):
        hint = args[0] if len(args) == 1 else hint
        origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:   # a YAML list or fire's tuple of a comma-separated option
            return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        if origin is list:
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            return list(value)
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise ValueError(f"--{name}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value

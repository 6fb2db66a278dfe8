"""The checks of a training job made before anything is submitted (models, data, batch, memory,
ZeRO, training arguments), each a :class:`jobs.check.Check`: passed, failed or skipped with its reason."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

from cluster.launch_spec import LaunchSpec
from jobs.check import FAILED, PASSED, SKIPPED, Check
from llava_core.config import TrainConfig
from llava_core.data.validation import ValidationReport

DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def pending_upstream(path: str | None, job: dict[str, Any]) -> str | None:
    """The job directory of ``--after`` (a recipe's earlier stage, not finished yet) that ``path``
    lies in, or None: such a path is written before this job starts, so its checks are left to the
    ranks (also where it exists already: the stage's own directory as a model, an earlier attempt's output)."""
    if not path:
        return None
    target = Path(path).absolute()
    after = job.get("after") or []
    for upstream in [after] if isinstance(after, str) else after:
        if target.is_relative_to(Path(upstream).absolute()):
            return str(upstream)
    return None


def check_global_batch(cfg: TrainConfig, processes: int, expected: int | None) -> str:
    """Global batch = per-device x accumulation x processes; an error saying what to change when it
    differs from the recipe's ``expected`` (None or 0: no check)."""
    if cfg.per_device_train_batch_size == "auto":  # the ranks split the accumulation's samples into micro batches
        actual = cfg.gradient_accumulation_steps * processes
        line = (f"global batch: auto per device x accumulation = {cfg.gradient_accumulation_steps} samples x "
                f"{processes} processes = {actual}")
        if not expected or actual == expected:
            return line + (f" (recipe: {expected})" if expected else "")
        raise ValueError(f"{line}, but the recipe's global batch is {expected}")
    per_step = cfg.per_device_train_batch_size * processes
    actual = per_step * cfg.gradient_accumulation_steps
    line = (f"global batch: {cfg.per_device_train_batch_size} per device x {cfg.gradient_accumulation_steps} "
            f"accumulation x {processes} processes = {actual}")
    if not expected or actual == expected:
        return line + (f" (recipe: {expected})" if expected else "")
    hints = []
    if expected % per_step == 0:
        hints.append(f"--gradient_accumulation_steps {expected // per_step}")
    denom = cfg.gradient_accumulation_steps * processes
    if expected % denom == 0:
        hints.append(f"--per_device_train_batch_size {expected // denom}")
    hint = " or ".join(hints) if hints else "a per-device batch and accumulation whose product with the process count is the recipe's"
    raise ValueError(f"{line}, but the recipe's global batch is {expected}: set {hint} "
                     f"(or --global_batch_size {actual} to train with a different global batch on purpose)")


def estimate_memory_line(cfg: TrainConfig, processes: int, lengths: list[int], gpus_per_node: int = 1,
                         gpu_gib: float | None = None, platform: str | None = None) -> str:
    """Predicted peak GPU memory per rank (llava_core.train.memory), from the model's configs only, with
    the layers the ranks will checkpoint (``gradient_checkpointing: auto`` decides per GPU of
    ``gpu_gib`` GiB, the local GPU's when None, within the share ``platform``'s allocator leaves), and
    the host memory per node that an offloaded optimizer needs. Raises OSError/ValueError when the
    model's configs cannot be read."""
    from jobs.zero_choice import ranks_memory_share
    from llava_core.model.build import skeleton
    from llava_core.model.freeze import apply_freeze_plan
    from llava_core.train.memory import (
        auto_checkpointed_layers,
        estimate_host_memory,
        estimate_peak_memory,
        job_shape,
        local_gpu_gib,
    )

    model = apply_freeze_plan(skeleton(cfg), cfg)
    shape = dataclasses.replace(job_shape(model, cfg, lengths or [cfg.model_max_length]), world_size=processes)
    gpu_gib = gpu_gib or local_gpu_gib()
    note = ""
    if cfg.gradient_checkpointing is True:
        shape = dataclasses.replace(shape, checkpointed_layers=shape.layers)
    elif cfg.gradient_checkpointing == "auto":
        if gpu_gib is None:
            every = estimate_peak_memory(dataclasses.replace(shape, checkpointed_layers=shape.layers)).total_gib
            note = (f"; gradient_checkpointing auto: {every:.1f} GiB with all {shape.layers} layers checkpointed, "
                    "the ranks checkpoint the fewest that fit their GPU (--gpu_gib N: the choice for N GiB)")
        else:
            count = auto_checkpointed_layers(shape, gpu_gib, ranks_memory_share(platform))
            shape = dataclasses.replace(shape, checkpointed_layers=count)
            note = f"; gradient_checkpointing auto: {count} of {shape.layers} layers on a {gpu_gib:.0f} GiB GPU"
    est = estimate_peak_memory(shape)
    parts = ", ".join(f"{k} {v:.1f}" for k, v in est.parts_gib.items())
    checkpointing = "" if cfg.gradient_checkpointing != "auto" or gpu_gib is not None else " without checkpointing"
    line = f"{est.total_gib:.1f} GiB peak per GPU{checkpointing} ({parts}){note}"
    host = estimate_host_memory(shape)
    if host is not None:
        line += (f"; optimizer offloaded: {host:.0f} GiB of host RAM per process, "
                 f"{host * gpus_per_node:.0f} GiB per node of {gpus_per_node} GPUs")
    return line


def memory_layout_gap(cfg: TrainConfig) -> str | None:
    """Why the memory estimate cannot measure ``cfg``'s model (None: it can): it counts the parts its
    family's table names (``Family.estimable``)."""
    from llava_core.model.build import other_family
    family = other_family(cfg.model_name_or_path, cfg.cache_dir)
    if family is None or family.estimable:
        return None
    return f"the estimate cannot count {family.title}'s parts yet"


def check_output_dir(job_dir: Path) -> Check:
    """The job directory must be a folder (made at submit); say when it resumes."""
    if job_dir.exists() and not job_dir.is_dir():
        return Check("output directory", FAILED, f"--output_dir {job_dir} is a file: give a folder (it is created)")
    checkpoints = sorted(job_dir.glob("checkpoint-*")) if job_dir.is_dir() else []
    resumes = f" (exists: resumes from its newest complete checkpoint of {len(checkpoints)})" if checkpoints else ""
    return Check("output directory", PASSED, f"{job_dir}{resumes}")


def missing_flags(cfg: TrainConfig) -> list[str]:
    """The flags every training job needs that ``cfg`` lacks."""
    return [f"--{name}" for name in ("model_name_or_path", "data_path") if not getattr(cfg, name)]


def check_models(cfg: TrainConfig) -> tuple[Check, TrainConfig | None]:
    """Locate the LLM (or vision-language checkpoint) and the vision tower (llava_core.model.hub); the
    config with loadable paths, or None with the reason in the failed check: an unsupported
    ``model_type`` names the supported families, and what a family cannot do yet names its flag."""
    from llava_core.model.build import (
        assembly_errors,
        check_family_settings,
        family_notes,
        is_text_only_run,
        other_family,
    )
    from llava_core.model.hub import hub_unavailable, locate

    found, errors = {}, []
    for flag in ("model_name_or_path", "vision_tower"):
        if getattr(cfg, flag):
            try:
                found[flag] = locate(getattr(cfg, flag), flag, cfg.cache_dir)
            except FileNotFoundError as e:
                errors.append(str(e))
    if errors:
        return Check("model", FAILED, "\n".join(errors)), None
    located = dataclasses.replace(cfg, **found)
    try:
        text_only = is_text_only_run(located)
        family = other_family(located.model_name_or_path, located.cache_dir)
    except (OSError, ValueError) as e:
        return Check("model", FAILED, str(e)), None
    if family is not None and (errors := check_family_settings(family, located)):
        return Check("model", FAILED, "\n".join(errors)), None
    if errors := assembly_errors(located):
        return Check("model", FAILED, "\n".join(errors)), None
    names = [n for n in (cfg.model_name_or_path, cfg.vision_tower) if n]
    where = [f"{n} (local cache: {p})" if p != n else n for n, p in zip(names, (located.model_name_or_path, located.vision_tower))]
    hub = "" if hub_unavailable() else "; hub reachable"
    kind = "; a causal LM without a vision part: trains text only" if text_only else ""
    if family is not None:
        kind = "; ".join([f"; {family.title} ({family.model_type})", *family_notes(family, located)])
    return Check("model", PASSED, ", ".join(where) + kind + hub), located


def check_projector(cfg: TrainConfig, job: dict[str, Any] | None = None) -> Check | None:
    """A stage-1 ``mm_projector.bin`` to start from must exist (or be written by ``--after``'s job)."""
    path = cfg.pretrain_mm_mlp_adapter
    if not path:
        return None
    upstream = pending_upstream(path, job or {})
    if upstream:
        return Check("projector", SKIPPED, f"{path}: written by {upstream} before this job starts")
    if not Path(path).is_file():
        return Check("projector", FAILED, f"--pretrain_mm_mlp_adapter {path}: no such file (stage 1 writes "
                                          "runs/<job>/mm_projector.bin)")
    return Check("projector", PASSED, path)


def check_deepspeed(cfg: TrainConfig, platform: str | None = None, *, located: TrainConfig | None = None,
                    world_size: int = 1, gpu_gib: float | None = None, lengths: list[int] | None = None,
                    ) -> tuple[Check | None, TrainConfig]:
    """A named or JSON ZeRO config that loads, and that this DeepSpeed can run on ``platform`` when
    the job names one (``--platform``, ``--cluster``); ``cfg`` with the config itself in place of
    its name or path (resolved here, once: the ranks and config.yaml get the dict).

    ``--deepspeed auto`` (jobs.zero_choice) is chosen here from the model's configs (``located``),
    ``world_size`` GPUs of ``gpu_gib`` GiB and the samples' ``lengths``: the chosen config (None:
    no DeepSpeed), with the estimate per option as the reason. Without ``gpu_gib`` (no GPU known
    for the ranks) it stays ``auto`` for the ranks to choose at start, and the check says so."""
    from cluster.deepspeed import ZERO_CONFIG_NAMES, load_zero_config
    from jobs.zero_choice import describe, is_auto, preview, resolve_auto

    if not cfg.deepspeed or isinstance(cfg.deepspeed, dict):
        return None, cfg
    if is_auto(cfg.deepspeed):
        if located is None:
            return Check("deepspeed", SKIPPED, "auto needs the model's configs (see the model check)"), cfg
        try:
            if gpu_gib is None:
                would = preview(located, world_size, lengths or (), platform)
                return Check("deepspeed", PASSED, f"auto: chosen by the ranks at start from their GPU's memory (no GPU "
                                                  f"known here: --gpu_gib N chooses now for N GiB cards); on "
                                                  f"{world_size} GPU(s) it would be {would}"), dataclasses.replace(cfg, deepspeed="auto")
            choice, resolved = resolve_auto(located, world_size, gpu_gib, lengths or (), platform)
        except (OSError, ValueError) as e:
            return Check("deepspeed", FAILED, f"auto: the model's configs did not load: {e}"), cfg
        text = describe(choice, gpu_gib)
        if not choice.fits:
            return Check("deepspeed", FAILED, f"{text}\nmore GPUs, a smaller --per_device_train_batch_size (with more "
                                              "--gradient_accumulation_steps) or --model_max_length, or name a config "
                                              "(--deepspeed zero3_offload) to try anyway"), cfg
        return Check("deepspeed", PASSED, text), dataclasses.replace(cfg, deepspeed=resolved.deepspeed)
    try:
        config = load_zero_config(cfg.deepspeed, platform)
    except ValueError as e:
        stem = Path(cfg.deepspeed).stem
        hint = f" (LLaVA's {Path(cfg.deepspeed).name} ships here as --deepspeed {stem})" if stem in ZERO_CONFIG_NAMES else ""
        return Check("deepspeed", FAILED, f"{e}{hint}"), cfg
    check = Check("deepspeed", PASSED, f"{cfg.deepspeed}: ZeRO stage {config['zero_optimization'].get('stage')}")
    return check, dataclasses.replace(cfg, deepspeed=config)


def check_training_arguments(cfg: TrainConfig) -> Check:
    """The ``transformers.TrainingArguments`` the ranks will build, built here (no model loaded):
    scheduler, optimizer and any passed-through field fail now, not after the queue. Precision
    and TF32 depend on the ranks' GPU and are left to the platform checks there."""
    from transformers.trainer_utils import SchedulerType

    from llava_core.train.trainer import training_arguments

    if cfg.max_steps <= 0 and cfg.num_train_epochs <= 0:
        return Check("training arguments", FAILED, f"--num_train_epochs {cfg.num_train_epochs} trains nothing: "
                                                   "give a positive number of epochs or --max_steps N")
    if cfg.bf16 and cfg.fp16:
        return Check("training arguments", FAILED, "--bf16 True and --fp16 True: pick one precision")
    if cfg.save_strategy == "steps" and not cfg.save_steps > 0:
        return Check("training arguments", FAILED, f"--save_steps {cfg.save_steps}: --save_strategy steps needs a "
                                                   "positive number of steps between checkpoints (or --save_strategy "
                                                   "epoch or no)")
    # built as a lone process: with a rank's variables inherited, TrainingArguments would join a process group
    saved = {k: os.environ.pop(k) for k in DISTRIBUTED_ENV if k in os.environ}
    try:
        micro_batch = 1 if cfg.per_device_train_batch_size == "auto" else cfg.per_device_train_batch_size  # the ranks choose
        args = training_arguments(dataclasses.replace(cfg, bf16=False, fp16=False, tf32=None, deepspeed=None,
                                                      per_device_train_batch_size=micro_batch, report_to="none"),
                                  cpu_shared_state=False)
    except (ValueError, TypeError, ImportError) as e:
        return Check("training arguments", FAILED, _name_the_flag(str(e), cfg))
    finally:
        os.environ.update(saved)
    scheduler = SchedulerType(args.lr_scheduler_type).value
    return Check("training arguments", PASSED, f"optimizer {args.optim.value if hasattr(args.optim, 'value') else args.optim}, "
                                               f"scheduler {scheduler}")


def _name_the_flag(error: str, cfg: TrainConfig) -> str:
    """TrainingArguments' error with the flag whose value it rejects in front ("x is not a valid ...")."""
    values = {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **cfg.training_args}
    rejected = error.split(" is not a valid ", 1)[0].strip("'\"") if " is not a valid " in error else None
    flag = next((name for name, value in values.items() if rejected is not None and str(value) == rejected), None)
    return f"--{flag} {rejected}: {error}" if flag else error


def check_data(cfg: TrainConfig, located: TrainConfig | None, why_no_model: str,
               workers: int | None = None) -> tuple[list[Check], ValidationReport | None]:
    """Validate every sample on ``workers`` processes (None: all cores), cached when nothing
    changed (llava_core.data.preflight): structure and images always, lengths when the tokenizer and
    vision tower load (``located``), else a skipped ``lengths`` check saying why (``why_no_model``)."""
    import time

    from llava_core.data.preflight import preflight
    from llava_core.data.validation import check_level

    if not cfg.data_path:
        return [Check("data", FAILED, "--data_path is required (LLaVA, alpaca, sharegpt or messages JSON/JSONL)")], None
    if cfg.image_folder and not Path(cfg.image_folder).is_dir():
        return [Check("data", FAILED, f"--image_folder {cfg.image_folder}: no such folder")], None
    checks = []
    t0 = time.monotonic()
    try:
        check_level(cfg.check_images)
        if located is None:
            report = preflight(cfg.data_path, None, cfg.image_folder or None, cfg.check_images, cfg.prompt_format,
                               cfg.allow_images_outside_folder, workers=workers, data_format=cfg.data_format)
            checks.append(Check("lengths", SKIPPED, f"not checked: {why_no_model}"))
        else:
            from llava_core.train.supervised import validate_data

            report = validate_data(located, workers=workers)
    except (OSError, ValueError) as e:  # a file-level problem, or the tokenizer / image processor did not load
        return [Check("data", FAILED, str(e))], None
    took = time.monotonic() - t0
    summary = report.summary(limit=10)
    if not report.good:
        status = FAILED
        summary += "\n  nothing to train on" if report.total else " (no records)"
    elif report.problems and cfg.on_bad_sample == "fail":
        status = FAILED
        summary += "\n  fix them or pass --on_bad_sample skip"
    else:
        status = PASSED
    what = "structure and images" if located is None else "structure, images and lengths"
    first, _, rest = summary.partition("\n")
    where = (f"cached result {report.cache}" if report.cache and took < 30 else f"{took:.0f} s") if report.total else ""
    first += f" ({where})" if where else ""
    return [Check("data", status, f"{what}: {first}" + (f"\n{rest}" if rest else "")), *checks], report


def _ranks_gpu_gib(spec: LaunchSpec) -> float | None:
    """The ranks' GPU memory where the submitter knows it: ``--gpu_gib`` (or the cluster profile's),
    else this machine's GPU when the ranks start on this machine (local, docker), else None (the
    ranks read their own)."""
    from cluster.launch import resolve_executor
    from llava_core.train.memory import local_gpu_gib

    if spec.gpu_gib:
        return float(spec.gpu_gib)
    try:
        here = resolve_executor(spec.executor) in ("local", "docker")
    except ValueError:  # no Slurm controller answers: the launch check says so
        here = False
    return local_gpu_gib() if here else None


def training_checks(cfg: TrainConfig, job_dir: Path, spec: LaunchSpec, job: dict[str, Any],
                    data_check: Callable[[TrainConfig], Check] | None = None,
                    ) -> tuple[list[Check], TrainConfig, ValidationReport | None]:
    """Every check of a training job before it is submitted (``job``: the job options); the config
    with its ZeRO config resolved, and the data report. ``data_check`` replaces the LLaVA-data
    validation (DPO pairs)."""
    procs = spec.world_size
    checks = [check_output_dir(job_dir)]
    missing = [f for f in missing_flags(cfg) if f != "--data_path"]
    if missing:
        checks.append(Check("model", FAILED, f"{', '.join(missing)} is required"))
        located, why = None, "no model given"
    else:
        model_check, located = check_models(cfg)
        checks.append(model_check)
        why = f"the tokenizer and image-token count need the model ({model_check.detail})"
    from jobs.micro_batch import check_micro_batch, is_auto_batch
    from jobs.zero_choice import is_auto

    auto = is_auto(cfg.deepspeed)  # chosen after the data check: it reads the samples' lengths
    ds_check, cfg = (None, cfg) if auto else check_deepspeed(cfg, spec.platform)
    if located is not None:
        located = dataclasses.replace(located, deepspeed=cfg.deepspeed)
    checks += [c for c in (check_projector(cfg, job), ds_check) if c]
    ds_at = len(checks)
    report = None
    if data_check is not None:
        checks.append(data_check(cfg))
    elif pending_upstream(cfg.data_path, job):  # a recipe's earlier stage writes it: the ranks validate it
        checks.append(Check("data", SKIPPED, f"{cfg.data_path}: written by {pending_upstream(cfg.data_path, job)} "
                                             "before this job starts (the ranks validate it)"))
    else:
        data_checks, report = check_data(cfg, located, why)
        checks += data_checks
    batch_check = None
    if is_auto_batch(cfg.per_device_train_batch_size):  # after the data check too: it reads the samples' lengths
        batch_check, cfg, located = check_micro_batch(cfg, located, procs, _ranks_gpu_gib(spec),
                                                      report.lengths if report else (), spec.platform,
                                                      job.get("global_batch_size"))
        checks.insert(ds_at, batch_check)
        ds_at += 1
    if auto:
        ds_located = located  # the ranks choose the micro batch: ZeRO is chosen at a micro batch of 1, as they do
        if located is not None and is_auto_batch(located.per_device_train_batch_size):
            ds_located = dataclasses.replace(located, per_device_train_batch_size=1)
        ds_check, cfg = check_deepspeed(cfg, spec.platform, located=ds_located, world_size=procs,
                                        gpu_gib=_ranks_gpu_gib(spec), lengths=report.lengths if report else None)
        checks.insert(ds_at, ds_check)
        if located is not None:
            located = dataclasses.replace(located, deepspeed=cfg.deepspeed)
    checks.append(check_training_arguments(cfg))
    if batch_check is not None and batch_check.status == FAILED:
        checks.append(Check("global batch", SKIPPED, "see the micro batch check"))
    else:
        try:
            checks.append(Check("global batch", PASSED, check_global_batch(cfg, procs, job.get("global_batch_size")).split(": ", 1)[1]))
        except ValueError as e:
            checks.append(Check("global batch", FAILED, str(e).split(": ", 1)[1]))
    if located is None:
        checks.append(Check("memory estimate", SKIPPED, "needs the model's configs (see the model check)"))
    elif (gap := memory_layout_gap(located)) is not None:
        checks.append(Check("memory estimate", SKIPPED, gap))
    elif is_auto(cfg.deepspeed):
        checks.append(Check("memory estimate", SKIPPED, "the ranks choose the ZeRO setup (see the deepspeed check)"))
    elif is_auto_batch(cfg.per_device_train_batch_size):
        checks.append(Check("memory estimate", SKIPPED, "the ranks choose the micro batch (see the micro batch check)"))
    elif ds_check is None or ds_check.status not in (FAILED, SKIPPED):
        try:
            line = estimate_memory_line(located, procs, report.lengths if report else [], spec.gpus_per_node,
                                        spec.gpu_gib, spec.platform)
            checks.append(Check("memory estimate", PASSED, line))
        except (OSError, ValueError) as e:
            checks.append(Check("memory estimate", FAILED, f"the model's configs did not load: {e}"))
    else:
        checks.append(Check("memory estimate", SKIPPED, "needs a ZeRO config (see the deepspeed check)"))
    return checks, cfg, report

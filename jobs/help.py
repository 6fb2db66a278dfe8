"""``--help`` of the commands that take every training flag (``jobs.submit``, ``jobs.validate``),
generated from the code: the fields of :class:`llava_core.config.TrainConfig` (LLaVA's names, with
the docstring under each field), the other ``transformers.TrainingArguments`` fields, the launcher's
:class:`cluster.launch_spec.LaunchSpec`, the job options, and the shipped presets."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import re
from typing import Any

SECTION = re.compile(r"#\s*-+\s*(\w+)")
# TrainConfig's source sections -> the groups --help shows
GROUPS = {"model": "model", "LoRA": "model", "data": "data", "training": "training"}
SWITCHES = ("dry_run", "follow", "demo_assets")
JOB_OPTION_TYPES = {"global_batch_size": "int"}


def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """name -> (section, docstring) of a dataclass's fields: the string literal under each field and
    the ``# --- section ---`` comment above it."""
    lines, _ = inspect.getsourcelines(cls)
    sections: list[tuple[int, str]] = [(i + 1, m.group(1)) for i, line in enumerate(lines) if (m := SECTION.search(line))]
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs: dict[str, tuple[str, str]] = {}
    for node, following in zip(body, body[1:] + [None]):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) \
                and isinstance(following.value.value, str):
            doc = " ".join(following.value.value.split())
        section = next((name for line, name in reversed(sections) if line < node.lineno), "")
        docs[node.target.id] = (section, doc)
    return docs


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_name(hint: Any) -> str:
    text = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    text = re.sub(r"\b[\w.]+\.(\w+)", r"\1", str(text)).replace("typing.", "")
    return re.sub(r"\s*\|\s*None\b|\bOptional\[(.*)\]", r"\1", text)


def _add(group: argparse._ArgumentGroup, flag: str, type_name: str, doc: str, default: Any) -> None:
    shown = "" if default in (None, "", [], {}) else f" (default: {default})"
    group.add_argument(f"--{flag}", metavar=type_name.upper() if type_name else "VALUE",
                       help=(doc + shown).replace("%", "%%") or None)


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    return text.split(". ")[0].rstrip(".")


def _presets() -> str:
    from jobs.options import PRESET_DIR, preset_names

    rows = []
    for name in preset_names():
        first = (PRESET_DIR / f"{name}.yaml").read_text().splitlines()[:1]
        command = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        command = command.removesuffix("\\").rstrip() + (" ..." if command.endswith("\\") else "")
        rows.append(f"  {name:<26} {command}")
    return "presets (jobs/presets/NAME.yaml; --preset NAME):\n" + "\n".join(rows)


def _launch_and_job_groups(parser: argparse.ArgumentParser, job_flags: bool, taken: set[str] = frozenset()) -> None:
    from cluster.launch_spec import LaunchSpec
    from jobs.options import JOB_OPTIONS

    if job_flags:
        launch = parser.add_argument_group("launch (where and how the processes start)")
        launch_docs = field_docs(LaunchSpec)
        for f in dataclasses.fields(LaunchSpec):
            if f.name not in ("job_dir", "name"):
                group = f.metadata.get("group")
                doc = launch_docs.get(f.name, ("", ""))[1] + (f" [{group} executors only]" if group else "")
                _add(launch, f.name.replace("_", "-"), _type_name(f.type), doc, _default(f))
    job = parser.add_argument_group("job")
    for name, doc in JOB_OPTIONS.items():
        if name in taken or (not job_flags and name not in ("preset", "config", "runs", "demo_assets")):
            continue
        if name in SWITCHES:
            job.add_argument(f"--{name.replace('_', '-')}", action="store_true", help=doc)
        else:
            _add(job, name, JOB_OPTION_TYPES.get(name, "str"), doc, None)


def _settings_group(parser: argparse.ArgumentParser, title: str, cls: type, skip: set[str] = frozenset()) -> None:
    """One group with a flag per field of the settings dataclass ``cls`` (its docstrings), but ``skip``."""
    group = parser.add_argument_group(title)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name not in skip and not _type_name(f.type).startswith("dict"):
            _add(group, f.name, _type_name(f.type), docs.get(f.name, ("", ""))[1], _default(f))


def train_parser(prog: str, description: str, job_flags: bool = True, settings: type | None = None,
                 extra: dict[str, tuple[str, str, Any]] | None = None) -> argparse.ArgumentParser:
    """An argparse parser, used for its help only, holding every flag of a training job in groups:
    TrainConfig's (LLaVA's names), those a subclass ``settings`` adds, the other TrainingArguments."""
    from transformers import TrainingArguments

    from llava_core.config import TrainConfig

    parser = argparse.ArgumentParser(prog=prog, usage=f"{prog} [--FLAG VALUE ...]", description=description,
                                     add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {name: parser.add_argument_group(f"{name} (LLaVA's train.py names)") for name in ("model", "data")}
    groups["training"] = parser.add_argument_group("training (LLaVA's names, then any transformers.TrainingArguments field)")
    base = {f.name for f in dataclasses.fields(TrainConfig)}
    if settings is not None and settings is not TrainConfig:
        _settings_group(parser, "this job's own", settings, skip=base)
    if extra:
        own = parser.add_argument_group("this command's own")
        for name, (type_name, doc, default) in extra.items():
            _add(own, name, type_name, doc, default)
    docs = field_docs(TrainConfig)
    hf = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_")}
    hf_help = {name: _first_sentence(f.metadata.get("help", "")) for name, f in hf.items()}
    for f in dataclasses.fields(TrainConfig):
        section, doc = docs.get(f.name, ("training", ""))
        if f.name != "training_args":
            _add(groups[GROUPS.get(section, "training")], f.name, _type_name(f.type), doc or hf_help.get(f.name, ""), _default(f))
    for name, f in hf.items():
        if name not in base:
            _add(groups["training"], name, _type_name(f.type), hf_help[name], _default(f))
    _launch_and_job_groups(parser, job_flags, base)
    parser.epilog = _presets()
    return parser


def kind_parser(prog: str, kind_name: str) -> argparse.ArgumentParser:
    """The help parser of one registered job kind, from its settings dataclass."""
    from jobs.kinds import get_kind
    from llava_core.config import TrainConfig

    kind = get_kind(kind_name)
    cls = kind.settings_class
    description = f"{kind.summary}.\n{inspect.getdoc(cls) or ''}\nThe order is preset <- --config file <- command line; " \
                  "--dry-run prints the resolved config and the checks."
    if issubclass(cls, TrainConfig):
        return train_parser(prog, description, settings=cls)
    parser = argparse.ArgumentParser(prog=prog, usage=f"{prog} [--FLAG VALUE ...]", description=description,
                                     add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    _settings_group(parser, kind.name, cls)
    _launch_and_job_groups(parser, True)
    return parser


def submit_help(args: list[str]) -> str:
    """``python -m jobs.submit [JOB] --help``."""
    from jobs.kinds import KINDS, get_kind

    job = next((a for a in args if not a.startswith("-")), None)
    prog = f"python -m jobs.submit {job}" if job else "python -m jobs.submit"
    if job in KINDS:
        return kind_parser(prog, job).format_help()
    jobs = "\n".join(f"  {name:<10} {get_kind(name).summary}" for name in KINDS)
    unknown = f"unknown job {job!r}\n\n" if job else ""
    return (f"{unknown}usage: {prog} JOB [--preset NAME] [--config FILE.yaml] [--dry-run] [--FLAG VALUE ...]\n\n"
            f"jobs:\n{jobs}\n\n`{prog} JOB --help` lists the job's flags.\n\n{_presets()}")


def validate_help(args: list[str]) -> str:
    """``python -m jobs.validate --help``."""
    prog = "python -m jobs.validate"
    parser = train_parser(prog, "Check every sample a job would train on: structure and images; lengths after "
                          "image-token expansion when the tokenizer and vision tower load.\nExits 1 when a bad sample "
                          "is found (unless --on_bad_sample skip).", job_flags=False,
                          extra={"tokenizer": ("str", "tokenizer (path or hub id) to count lengths with, in place of "
                                               "--model_name_or_path's", None),
                                 "out": ("str", "write the problems as JSON to this file", None)})
    return parser.format_help()

"""What a job kind declares, and what :func:`jobs.submit.submit_job` hands it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cluster.launch_spec import LaunchSpec
from jobs.check import Check


@dataclass
class Submission:
    """One job being submitted: where it goes and where its options came from."""

    kind: str
    job_dir: Path
    spec: LaunchSpec
    job: dict[str, Any]
    """The job options (``--name``, ``--runs``, ``--global_batch_size``...: jobs.options.JOB_OPTIONS)."""
    launch: dict[str, Any] = field(default_factory=dict)
    """The launch options as given (``spec`` holds them resolved, with a cluster profile's)."""
    origins: dict[str, str] = field(default_factory=dict)
    """Where each option's value came from (preset, config file, command line, a kind's default)."""
    submit_job: Callable[..., Any] | None = None
    """:func:`jobs.submit.submit_job`, for a kind whose job submits other jobs (the demo)."""

    def set_default(self, values: dict[str, Any], name: str, value: Any, origin: str) -> None:
        """``values[name] = value`` unless the user gave it, recording where it came from."""
        if name not in values:
            values[name] = value
            self.origins[name] = origin


@dataclass
class Checked:
    """What a kind's checks found: the checks, the settings as the ranks get them (names resolved:
    a ZeRO config name becomes the config), and anything else the task needs (a data report)."""

    checks: list[Check]
    settings: Any
    extra: Any = None


class JobKind:
    """One kind of job. A new kind subclasses this in its own module and registers one line in
    :data:`jobs.kinds.KINDS`; ``jobs.submit`` calls, in order: :meth:`option_names` (for flag
    validation), :meth:`prepare`, :meth:`settings`, :meth:`check`, then :meth:`task` (or, for an
    ``inline`` kind, :meth:`run_inline`)."""

    name: str = ""
    summary: str = ""
    """One line for ``jobs.submit --help``."""
    settings_class: type = object
    """The typed settings: a dataclass with a docstring under each field, ``from_dict`` and ``to_dict``."""
    inline: bool = False
    """True: the job runs in the submitting process (a pipeline of other jobs), not on ranks."""

    def option_names(self) -> set[str]:
        """The flag names this kind takes besides the launch and job options."""
        return {f.name for f in dataclasses.fields(self.settings_class)}

    def prepare(self, values: dict[str, Any], sub: Submission) -> dict[str, Any]:
        """The kind's own defaults and rules applied to the given options (``values`` may be changed)."""
        return values

    def settings(self, values: dict[str, Any]) -> Any:
        """The typed settings from the prepared options (errors name the flag)."""
        return self.settings_class.from_dict(values)

    def check(self, settings: Any, sub: Submission) -> Checked:
        """Every check before anything starts."""
        return Checked([], settings)

    def task(self, checked: Checked, sub: Submission) -> Callable[[], object]:
        """The picklable callable every rank runs."""
        raise NotImplementedError(f"job kind {self.name} runs inline")

    def run_inline(self, checked: Checked, sub: Submission) -> object:
        """Run an ``inline`` kind in this process."""
        raise NotImplementedError(f"job kind {self.name} runs on ranks")

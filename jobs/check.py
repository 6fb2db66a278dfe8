"""One check's outcome: what every job kind's checks return, ``jobs.submit`` prints and ``--dry-run``
lists (``name: [passed|failed|skipped] detail``)."""
from __future__ import annotations

import dataclasses

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclasses.dataclass
class Check:
    """The outcome of one check: ``name: [status] detail`` (detail lines after the first indented)."""

    name: str
    status: str
    detail: str

    def __str__(self) -> str:
        first, *rest = self.detail.splitlines() or [""]
        return "\n".join([f"{self.name}: [{self.status}] {first}".rstrip(), *(f"  {r.lstrip()}" for r in rest)])

"""What a run did: one result that the executor counts units into and the job runner completes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobResult:
    out: Path | str | None = None
    done: int = 0
    skipped: int = 0  # already in the store
    failed: list[tuple[str, str]] = field(default_factory=list)  # (unit label, reason)
    retried: int = 0
    seconds: float = 0.0
    site: Path | str | None = None
    skipped_inputs: dict[str, int] = field(default_factory=dict)  # reason -> images the scans skipped

    @property
    def ok(self) -> bool:
        return not self.failed

"""Failure records: an input that yields no sample is written down, never silently dropped."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from occsynth.contract import FAILURE_STAGES


@dataclass(frozen=True)
class Failure:
    key: str
    sample_id: str
    source: str
    stage: str
    reason: str

    def __post_init__(self) -> None:
        if self.stage not in FAILURE_STAGES:
            raise ValueError(f"unknown failure stage {self.stage!r}; expected one of {FAILURE_STAGES}")

    def to_dict(self) -> dict:
        return asdict(self)


class SampleError(Exception):
    """Raised inside the per-sample pipeline; becomes a Failure record for that sample."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason

"""How the jobs of an array share a stage's work: units dealt round-robin over one numbering of the whole stage.

Stages 2 and 5 cut their work into units (a chunk of one set in stage 5, a chunk of one noisy condition in
stage 2) numbered across everything one command does; unit ``u`` belongs to job ``u mod num_jobs``. Numbering
across sets (not per set) is what keeps every job busy when each set is smaller than ``chunk_size × num_jobs``:
twenty one-chunk conditions over eight jobs go to jobs 0..7, 0..7, 0..3 instead of all to job 0. Which job does
a unit never changes its result, so any split gives the same outputs.
"""
from __future__ import annotations

import dataclasses

from nawsv.utils.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class JobShare:
    """Job ``job`` of ``num_jobs``; ``array_first`` is the Slurm array index of job 0 (used in messages only)."""

    job: int = 0
    num_jobs: int = 1
    array_first: int = 0

    def __post_init__(self) -> None:
        if self.num_jobs < 1 or not 0 <= self.job < self.num_jobs:
            raise ConfigError(f"--job {self.job} --num_jobs {self.num_jobs}: need num_jobs >= 1 and "
                              f"0 <= job < num_jobs")
        if self.array_first < 0:
            raise ConfigError(f"--array_first {self.array_first}: an array index is >= 0")

    def owns(self, unit: int) -> bool:
        """True when ``unit`` (numbered over the whole stage command) is this job's."""
        return unit % self.num_jobs == self.job

    def owner(self, unit: int) -> str:
        """Who does ``unit``: 'job 6 of 8 (array index 7)', or 'job 0 of 1' outside an array."""
        return self.owners([unit])

    def owners(self, units: list[int], shown: int = 8) -> str:
        """The distinct owners of ``units`` (the first ``shown``), e.g. 'jobs 2, 5 of 8 (array indices 2, 5)'."""
        jobs = sorted({unit % self.num_jobs for unit in units})
        more = ", ..." if len(jobs) > shown else ""
        names = ", ".join(str(job) for job in jobs[:shown]) + more
        text = f"job{'s' if len(jobs) > 1 else ''} {names} of {self.num_jobs}"
        if self.num_jobs == 1:
            return text
        indices = ", ".join(str(self.array_first + job) for job in jobs[:shown]) + more
        return f"{text} (array {'indices' if len(jobs) > 1 else 'index'} {indices})"

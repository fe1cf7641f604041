"""How the jobs of an array share a stage's work: units dealt round-robin over one numbering of the whole stage.

Stages 2 and 5 cut their work into units (a chunk of one set in stage 5, a chunk of one noisy condition in
stage 2) numbered across everything one command does; unit ``u`` belongs to job ``u mod num_jobs``. Numbering
across sets (not per set) is what keeps every job busy when each set is smaller than ``chunk_size × num_jobs``:
twenty one-chunk conditions over eight jobs go to jobs 0..7, 0..7, 0..3 instead of all to job 0. Which job does
a unit never changes its result, so any split gives the same outputs.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from nawsv.utils.errors import ConfigError, DataError


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

    def owners(self, units: Iterable[int], shown: int | None = None) -> str:
        """The distinct owners of ``units`` (all, or the first ``shown``): 'jobs 2, 5 of 8 (array indices 2, 5)'."""
        jobs = sorted({unit % self.num_jobs for unit in units})
        shown = len(jobs) if shown is None else shown
        more = ", ..." if len(jobs) > shown else ""
        names = ", ".join(str(job) for job in jobs[:shown]) + more
        text = f"job{'s' if len(jobs) > 1 else ''} {names} of {self.num_jobs}"
        if self.num_jobs == 1:
            return text
        indices = ", ".join(str(self.array_first + job) for job in jobs[:shown]) + more
        return f"{text} (array {'indices' if len(jobs) > 1 else 'index'} {indices})"


def array_spec(indices: Iterable[int]) -> str:
    """Indices in Slurm's ``--array`` syntax, runs collapsed: [1, 2, 3, 7] -> '1-3,7'."""
    runs: list[list[int]] = []
    for index in sorted(set(indices)):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


class UnfinishedUnits(DataError):
    """A merge found chunks that are not done yet. The error names every place, its chunks and every job still to
    run, so one look tells what to resubmit; :meth:`combine` joins those of several sets of one command.

    ``missing`` maps a place (an output dir) to (the unit number of its chunk 0, its unfinished chunks).
    """

    def __init__(self, share: JobShare, missing: dict[str, tuple[int, Sequence[int]]]) -> None:
        self.share = share
        self.missing = {place: (first, list(chunks)) for place, (first, chunks) in missing.items() if chunks}
        units = [first + chunk for first, chunks in self.missing.values() for chunk in chunks]
        places = "; ".join(f"{place}: chunk{'s' if len(chunks) > 1 else ''} {array_spec(chunks)}"
                           for place, (_, chunks) in self.missing.items())
        text = (f"merge: {len(units)} chunk(s) are not done yet ({places}); they belong to {share.owners(units)}: "
                f"run them, then merge again")
        if share.num_jobs > 1:
            indices = array_spec(share.array_first + unit % share.num_jobs for unit in units)
            last = share.array_first + share.num_jobs - 1
            text += f" (sbatch --array={indices} --export=ALL,ARRAY={share.array_first}-{last} <template> ...)"
        super().__init__(text)

    @classmethod
    def combine(cls, errors: Sequence["UnfinishedUnits"]) -> "UnfinishedUnits":
        return cls(errors[0].share, {place: found for error in errors for place, found in error.missing.items()})

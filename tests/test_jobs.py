"""The round-robin deal of work units to the jobs of an array, and how its messages name a job."""
import pytest

from nawsv.utils.errors import ConfigError
from nawsv.utils.jobs import JobShare


@pytest.mark.parametrize("units, num_jobs", [(1, 4), (6, 4), (21, 8), (480, 32), (5, 1)])
def test_every_unit_has_one_owner_and_shares_differ_by_at_most_one(units: int, num_jobs: int) -> None:
    shares = [[u for u in range(units) if JobShare(job, num_jobs).owns(u)] for job in range(num_jobs)]
    assert sorted(u for share in shares for u in share) == list(range(units))
    sizes = [len(share) for share in shares]
    assert max(sizes) - min(sizes) <= 1 and sizes[0] == -(-units // num_jobs)


def test_owners_name_jobs_and_array_indices() -> None:
    assert JobShare().owner(3) == "job 0 of 1"
    assert JobShare(0, 4, array_first=1).owner(6) == "job 2 of 4 (array index 3)"
    assert JobShare(0, 4).owners([0, 5, 4, 1]) == "jobs 0, 1 of 4 (array indices 0, 1)"
    many = JobShare(0, 32, array_first=100).owners(list(range(40)), shown=3)
    assert many == "jobs 0, 1, 2, ... of 32 (array indices 100, 101, 102, ...)"


@pytest.mark.parametrize("job, num_jobs, first, message", [
    (4, 4, 0, "--job 4 --num_jobs 4: need num_jobs >= 1 and 0 <= job < num_jobs"),
    (0, 0, 0, "--job 0 --num_jobs 0"),
    (0, 2, -1, "--array_first -1"),
])
def test_bad_shares_are_refused(job: int, num_jobs: int, first: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobShare(job, num_jobs, first)

"""The round-robin deal of work units to the jobs of an array, and how its messages name a job."""
import pytest

from nawsv.utils.errors import ConfigError
from nawsv.utils.jobs import JobShare, UnfinishedUnits, array_spec


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
    assert JobShare(0, 32).owners(range(40)).endswith("29, 30, 31)")           # by default every one


def test_array_spec_is_slurms_array_syntax() -> None:
    assert array_spec([7, 1, 3, 2, 2, 9, 10]) == "1-3,7,9-10"
    assert array_spec([5]) == "5" and array_spec([]) == ""


def test_an_unfinished_merge_names_every_place_and_array_index_at_once() -> None:
    share = JobShare(0, 8, array_first=1)
    first = UnfinishedUnits(share, {"emb/a": (0, [0, 9]), "emb/b": (10, [])})     # units 0, 9: jobs 0, 1
    second = UnfinishedUnits(share, {"emb/c": (12, [0, 1, 2, 8])})               # units 12-14, 20: jobs 4-6, 4
    assert str(UnfinishedUnits.combine([first, second])) == (
        "merge: 6 chunk(s) are not done yet (emb/a: chunks 0,9; emb/c: chunks 0-2,8); they belong to jobs 0, 1, "
        "4, 5, 6 of 8 (array indices 1, 2, 5, 6, 7): run them, then merge again (sbatch --array=1-2,5-7 "
        "--export=ALL,ARRAY=1-8 <template> ...)")
    assert str(UnfinishedUnits(JobShare(), {"x": (3, [2])})) == (
        "merge: 1 chunk(s) are not done yet (x: chunk 2); they belong to job 0 of 1: run them, then merge again")


@pytest.mark.parametrize("job, num_jobs, first, message", [
    (4, 4, 0, "--job 4 --num_jobs 4: need num_jobs >= 1 and 0 <= job < num_jobs"),
    (0, 0, 0, "--job 0 --num_jobs 0"),
    (0, 2, -1, "--array_first -1"),
])
def test_bad_shares_are_refused(job: int, num_jobs: int, first: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JobShare(job, num_jobs, first)

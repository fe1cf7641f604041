"""Records written beside stage outputs: a damaged or foreign one is an error naming the file and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from nawsv.data.noisy_sets import read_condition
from nawsv.export.package import read_export_config
from nawsv.extract.stamp import read_stamp
from nawsv.utils.errors import DataError
from nawsv.utils.records import read_record


def read(path: Path) -> dict | None:
    return read_record(path, "a test record", "rebuild it", lambda d: d.get("format") == 1)


def test_missing_record_is_none_and_a_valid_one_is_returned(tmp_path: Path) -> None:
    assert read(tmp_path / "absent.yaml") is None
    (tmp_path / "ok.yaml").write_text("format: 1\nx: [1, 2]\n", encoding="utf-8")
    assert read(tmp_path / "ok.yaml") == {"format": 1, "x": [1, 2]}


@pytest.mark.parametrize("content, message", [
    (b"format: [1\n",
     r"is not valid YAML \(line 2, column 1: expected ',' or '\]', but got '<stream end>'\); rebuild it"),
    (b"format: 1\n\xff\n", r"is not valid YAML \(not UTF-8: invalid start byte at byte 10\); rebuild it"),
    (b"- format\n- 1\n", r"is not a test record; rebuild it"),
    (b"format: 2\n", r"is not a test record; rebuild it"),
    (b"", r"is not a test record; rebuild it"),
])
def test_damaged_or_foreign_record(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"r\.yaml " + message + "$") as error:
        read(path)
    assert "\n" not in str(error.value)


def test_unreadable_record_says_so(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").mkdir()
    with pytest.raises(DataError, match=r"r\.yaml cannot be read .*; rebuild it"):
        read(tmp_path / "r.yaml")


def test_each_stage_names_its_own_fix(tmp_path: Path) -> None:
    for name in ("condition.yaml", "config.yaml", "extract_stamp.yaml"):
        (tmp_path / name).write_text("format: unknown\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"condition\.yaml is not a stage-2 condition .*rerun stage 2"):
        read_condition(tmp_path)
    with pytest.raises(DataError, match=r"config\.yaml is not a nawsv export config .*rerun stage 8"):
        read_export_config(tmp_path)
    with pytest.raises(DataError, match=r"extract_stamp\.yaml is not a nawsv extraction stamp; delete .* rerun"):
        read_stamp(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_stamp(empty) is None
    with pytest.raises(DataError, match="is not a stage-2 condition directory"):
        read_condition(empty)
    with pytest.raises(DataError, match="is not an export dir"):
        read_export_config(empty)

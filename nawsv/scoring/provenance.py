"""The protocol of a whole experiment, gathered by stage 6 from the records the earlier stages wrote.

Stage 2 leaves ``protocol.yaml`` in every condition dir, stages 3 and 4 in ``<exp>/warmup`` and
``<exp>/finetune``; stage 6 adds its own switches and writes ``<exp>/protocol.yaml`` (``protocol``,
``differs_from_released``, every switch value, the stages found and those whose record is missing), which
results.md, report.md and other tools read.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

from nawsv.extract.stamp import read_stamp
from nawsv.protocol import RECORD_NAME, make_record, read_protocol_record, switch_values, write_record
from nawsv.scoring.config import ScoreConfig

log = logging.getLogger(__name__)
TRAINING_STAGES = ("warmup", "finetune")


def _noisy_records(embeddings_dir: Path, noisy_sets: Iterable[str]) -> tuple[list[dict], list[str]]:
    """The stage-2 records of the scored noisy sets, found through their extraction stamps' data dirs."""
    records, missing = [], []
    for name in noisy_sets:
        stamp = read_stamp(embeddings_dir / name)
        record = None if stamp is None else read_protocol_record(Path(stamp["data_dir"]) / RECORD_NAME)
        if record is None:
            missing.append(name)
        else:
            records.append(record)
    return records, missing


def experiment_record(exp_dir: Path, noisy_sets: Iterable[str], cfg: ScoreConfig) -> dict[str, Any]:
    """Merge the stage records of ``exp_dir`` and the scored noisy sets with stage 6's own switches."""
    values: dict[str, Any] = {}
    stages: list[str] = []
    missing: list[str] = []
    noisy, noisy_missing = _noisy_records(exp_dir / "embeddings", noisy_sets)
    if noisy:
        stages.append("noisy")
    if noisy_missing:
        missing.append(f"noisy ({', '.join(noisy_missing)})")
    for record in noisy:
        for key, value in record["switches"].items():
            if key in values and values[key] != value:
                log.warning("the noisy sets were made with different %s (%r and %r)", key, values[key], value)
                value = "mixed"
            values[key] = value
    for stage in TRAINING_STAGES:
        record = read_protocol_record(exp_dir / stage / RECORD_NAME)
        if record is not None:
            values.update(record["switches"])
            stages.append(stage)
        elif (exp_dir / stage).is_dir() or stage == "finetune":
            missing.append(stage)
    values.update(switch_values("score", cfg))
    stages.append("score")
    return make_record(values, stages=stages, missing=missing)


def write_experiment_record(exp_dir: Path, record: dict[str, Any]) -> Path:
    """``<exp>/protocol.yaml`` (left alone when unchanged)."""
    return write_record(exp_dir / RECORD_NAME, record)

"""Which model and protocol made the embeddings in an output dir, so that different runs never mix.

``extract_stamp.yaml`` is written before the first partial result. It records the model file's sha256 (and,
for information, its path, size and mtime), the data dir and the values that determine the embeddings. A
later run with another model, data dir or protocol is refused with a message naming the difference; partial
results live under ``parts/<fingerprint>/`` so they can only ever be merged with their own kind.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from nawsv import __version__
from nawsv.utils.atomic import atomic_write_text
from nawsv.utils.errors import ExperimentError
from nawsv.utils.records import read_record

STAMP_NAME = "extract_stamp.yaml"
STAMP_FORMAT = "nawsv.extract_stamp.v1"
DEFINING = ("model_sha256", "data_dir", "definition")


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def make_stamp(model: Path, model_sha256: str, data_dir: Path, definition: dict[str, Any]) -> dict[str, Any]:
    """The stamp of one (model, data dir, protocol); only :data:`DEFINING` keys are compared."""
    stat = model.stat()
    return {"format": STAMP_FORMAT, "model_sha256": model_sha256, "data_dir": str(data_dir.resolve()),
            "definition": dict(definition), "model": str(model.resolve()), "model_size": stat.st_size,
            "model_mtime_ns": stat.st_mtime_ns, "nawsv_version": __version__}


def fingerprint(stamp: dict[str, Any]) -> str:
    """A short hash of the defining keys (names the partial-results dir)."""
    text = json.dumps({k: stamp[k] for k in DEFINING}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    return read_record(out_dir / STAMP_NAME, "a nawsv extraction stamp", f"delete {out_dir} and rerun the extraction",
                       lambda d: d.get("format") == STAMP_FORMAT and all(k in d for k in DEFINING))


def claim(out_dir: Path, stamp: dict[str, Any], outputs: list[Path]) -> None:
    """Write the stamp, or check that the existing one matches; refuse to mix models or protocols."""
    old = read_stamp(out_dir)
    if old is None:
        found = [p.name for p in outputs if p.exists()]
        if found:
            raise ExperimentError(f"{out_dir} holds {', '.join(found)} but no {STAMP_NAME}, so the model that "
                                  f"made them is unknown; delete {out_dir} (or choose another --out_dir) and rerun")
        atomic_write_text(out_dir / STAMP_NAME, yaml.safe_dump(stamp, sort_keys=False))
        return
    changed = _differences(old, stamp)
    if changed:
        raise ExperimentError(f"{out_dir} holds embeddings of another run ({'; '.join(changed)}); embeddings of "
                              f"different models or protocols are never mixed: delete {out_dir} or choose another "
                              f"--out_dir")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old["model_sha256"] != new["model_sha256"]:
        out.append(f"model {old.get('model')} sha256 {old['model_sha256'][:12]}... != {new['model']} sha256 "
                   f"{new['model_sha256'][:12]}...")
    if old["data_dir"] != new["data_dir"]:
        out.append(f"data dir {old['data_dir']} != {new['data_dir']}")
    for key, value in new["definition"].items():
        if old["definition"].get(key) != value:
            out.append(f"{key}: {old['definition'].get(key)!r} -> {value!r}")
    return out

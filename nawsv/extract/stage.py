"""Stage 5 for one data dir: sharded, resumable extraction to ``xvector.{ark,scp}`` / ``xvector_seg.{ark,scp}``.

Keys are sorted (C-locale code-point order) and cut into chunks of ``chunk_size``; the chunks of all sets of
one command are numbered one after the other (``first_unit`` is the number of a set's chunk 0) and dealt
round-robin (:mod:`nawsv.utils.jobs`), so sets smaller than ``chunk_size × n`` still share the jobs. Each
chunk is embedded as a unit (batches never cross chunks, so any job split gives bit-identical values) and
written as one partial ark per kind under ``parts/<fingerprint>/``, named by the chunk index and a hash of its
keys: an existing part file is therefore a finished one (written atomically).
When every chunk is done, whichever job gets there last (or ``--merge true``) concatenates the parts into
the final ark/scp, under an exclusive lock, then removes ``parts/``. A set whose final scp covers exactly
its keys, for the model and protocol recorded in ``extract_stamp.yaml``, is skipped.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from nawsv.formats.kaldi import require_utf8_path
from nawsv.data.sources import AudioSource, open_audio_source
from nawsv.extract import stamp as stamps
from nawsv.extract.arkio import read_ark, read_scp, write_ark, write_ark_scp
from nawsv.extract.config import ExtractConfig
from nawsv.extract.embedder import Embedder, resolve_device
from nawsv.extract.loader import iterate_audio
from nawsv.utils.atomic import atomic_write_text, sweep_stale_temporaries
from nawsv.utils.errors import ConfigError, DataError
from nawsv.utils.jobs import JobShare, UnfinishedUnits
from nawsv.utils.lock import directory_lock, file_lock
from nawsv.utils.progress import progress_bar

log = logging.getLogger(__name__)

OUTPUT_NAMES = {"whole": "xvector", "segments": "xvector_seg"}


class SpeakerModelFile:
    """The fine-tuned model file: hashed once, loaded only when some chunk actually needs computing."""

    def __init__(self, path: str | Path, device: str = "auto", bf16: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"--model {self.path} does not exist; run the fine-tuning stage (4) first or point "
                              f"at exp/<name>/finetune/avg_model.pt")
        self.device = resolve_device(device)
        self.bf16 = bf16 and self.device.type == "cuda"

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    @functools.cached_property
    def sha256(self) -> str:
        return stamps.file_sha256(self.path)

    @functools.cached_property
    def embedder(self) -> Embedder:
        from nawsv.models.speaker import load_speaker_model

        log.info("loading %s on %s", self.path, self.device)
        return Embedder(load_speaker_model(self.path, self.device), self.device, self.bf16)


@dataclasses.dataclass
class _SetPlan:
    """Keys, chunks and file names of one data dir's extraction."""

    data_dir: Path
    out_dir: Path
    keys: list[str]
    chunks: list[list[str]]
    kinds: list[str]                  # kinds still to produce (final output missing or stale)
    parts_dir: Path

    def part(self, chunk: int, kind: str) -> Path:
        digest = hashlib.sha256("\n".join(self.chunks[chunk]).encode("utf-8")).hexdigest()[:12]
        return self.parts_dir / f"{chunk:06d}-of-{len(self.chunks):06d}-{digest}.{OUTPUT_NAMES[kind]}.ark"

    def chunk_done(self, chunk: int) -> bool:
        return all(self.part(chunk, kind).is_file() for kind in self.kinds)


def final_paths(out_dir: Path, kind: str) -> tuple[Path, Path]:
    name = OUTPUT_NAMES[kind]
    return out_dir / f"{name}.ark", out_dir / f"{name}.scp"


def final_complete(out_dir: Path, kind: str, keys: Sequence[str]) -> bool:
    """The final scp lists exactly ``keys`` in order and points into this dir's ark.

    An scp whose records all point into an ark of the same name elsewhere (the experiment dir was moved or
    copied) is rewritten to point here: the offsets are unchanged.
    """
    ark, scp = final_paths(out_dir, kind)
    if not (scp.is_file() and ark.is_file()):
        return False
    pairs = read_scp(scp)
    if [key for key, _ in pairs] != list(keys):
        return False
    target = str(ark.resolve())
    located = [rx.rpartition(":") for _, rx in pairs]
    if all(path == target for path, _, _ in located):
        return True
    if not all(Path(path).name == ark.name and offset.isdigit() for path, _, offset in located):
        return False
    log.warning("%s points into another %s (the directory was moved?); rewriting it to point at %s", scp,
                ark.name, target)
    atomic_write_text(scp, "".join(f"{key} {target}:{offset}\n"
                                   for (key, _), (_, _, offset) in zip(pairs, located, strict=True)))
    return True


def _plan(model: SpeakerModelFile, data_dir: Path, out_dir: Path, cfg: ExtractConfig,
          source: AudioSource) -> _SetPlan | None:
    """Claim ``out_dir`` for this model and protocol; None when every wanted output is already complete."""
    keys = sorted(source.keys())
    if not keys:
        raise DataError(f"{data_dir} lists no utterances; nothing to extract")
    stamp = stamps.make_stamp(model.path, model.sha256, data_dir, cfg.definition(model.precision))
    outputs = [path for kind in OUTPUT_NAMES for path in final_paths(out_dir, kind)]
    out_dir.mkdir(parents=True, exist_ok=True)
    stamps.claim(out_dir, stamp, outputs)
    kinds = [kind for kind in cfg.kinds if not final_complete(out_dir, kind, keys)]
    if not kinds:
        shutil.rmtree(out_dir / "parts", ignore_errors=True)
        return None
    chunks = [keys[i:i + cfg.chunk_size] for i in range(0, len(keys), cfg.chunk_size)]
    return _SetPlan(data_dir, out_dir, keys, chunks, kinds, out_dir / "parts" / stamps.fingerprint(stamp))


def _embed_chunk(embedder: Embedder, cfg: ExtractConfig, plan: _SetPlan, chunk: int,
                 audio: list[tuple[str, np.ndarray]]) -> None:
    keys = [key for key, _ in audio]
    samples = [wav for _, wav in audio]
    for kind in plan.kinds:
        if kind == "whole":
            values = embedder.whole(samples, cfg.whole.max_samples, cfg.whole.batch_size)
        else:
            values = embedder.segments(samples, cfg.segments.samples, cfg.segments.num, cfg.segments.batch_size)
        write_ark(plan.part(chunk, kind), zip(keys, values, strict=True))


def _run_chunks(model: SpeakerModelFile, cfg: ExtractConfig, plan: _SetPlan, todo: list[int],
                source: AudioSource) -> None:
    """Load the audio of the ``todo`` chunks ahead of the model and write one partial ark per chunk and kind."""
    embedder = model.embedder
    keys = [key for chunk in todo for key in plan.chunks[chunk]]
    pending = iter(todo)
    chunk = next(pending)
    audio: list[tuple[str, np.ndarray]] = []
    bar = progress_bar(len(keys), f"extract {plan.data_dir.name}")
    try:
        for key, samples in iterate_audio(plan.data_dir, keys, cfg.num_workers, source):
            audio.append((key, samples))
            if len(audio) == len(plan.chunks[chunk]):
                _embed_chunk(embedder, cfg, plan, chunk, audio)
                bar.update(len(audio))
                audio = []
                chunk = next(pending, -1)
    finally:
        bar.close()


def _merge(plan: _SetPlan) -> None:
    """Concatenate the parts into the final ark/scp (the caller holds the merge lock)."""
    for kind in plan.kinds:
        if final_complete(plan.out_dir, kind, plan.keys):
            continue
        ark, scp = final_paths(plan.out_dir, kind)
        records = (record for chunk, keys in enumerate(plan.chunks)
                   for record in read_ark(plan.part(chunk, kind), keys, matrix=kind == "segments"))
        count = write_ark_scp(ark, scp, records)
        log.info("%s: wrote %s (%d utterances)", plan.out_dir, scp.name, count)
    shutil.rmtree(plan.out_dir / "parts", ignore_errors=True)


def count_chunks(data_dir: str | Path, cfg: ExtractConfig) -> int:
    """Chunks of one data dir: what a set adds to the numbering of the units that jobs share."""
    return -(-len(open_audio_source(Path(data_dir)).keys()) // cfg.chunk_size)


def extract_set(model: SpeakerModelFile, data_dir: str | Path, out_dir: str | Path, cfg: ExtractConfig, *,
                job: int = 0, num_jobs: int = 1, merge_only: bool = False, first_unit: int = 0,
                array_first: int = 0) -> bool:
    """Extract (or complete, or merge) one data dir; True when its final outputs are complete afterwards.

    Chunk ``c`` is unit ``first_unit + c`` of the command (the chunks of the sets before this one). Jobs of an
    array share ``out_dir``, but one job index runs once at a time: a second copy stops with an error naming
    the first (``<out_dir>/.job-<i>-of-<n>.lock``).
    """
    share = JobShare(job, num_jobs, array_first)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    require_utf8_path(out_dir.resolve(), "--out_dir", "xvector.scp names its ark by the absolute path")
    source = open_audio_source(data_dir)
    if merge_only:
        return _extract_set(model, source, data_dir, out_dir, cfg, share, first_unit, merge_only)
    with directory_lock(out_dir, f"stage 5 job {job} of {num_jobs}", name=f".job-{job}-of-{num_jobs}.lock"):
        return _extract_set(model, source, data_dir, out_dir, cfg, share, first_unit, merge_only)


def _extract_set(model: SpeakerModelFile, source: AudioSource, data_dir: Path, out_dir: Path, cfg: ExtractConfig,
                 share: JobShare, first_unit: int, merge_only: bool) -> bool:
    sweep_stale_temporaries(out_dir)              # of runs killed by SIGKILL (SIGTERM removes its own)
    plan = _plan(model, data_dir, out_dir, cfg, source)
    if plan is None:
        log.info("%s: embeddings already complete in %s; skipped", data_dir.name, out_dir)
        return True
    mine = [c for c in range(len(plan.chunks)) if share.owns(first_unit + c)]
    todo = [] if merge_only else [c for c in mine if not plan.chunk_done(c)]
    log.info("%s: %d utterances in %d chunk(s) (%s); job %d of %d: %d chunk(s) to do", data_dir.name,
             len(plan.keys), len(plan.chunks), " + ".join(plan.kinds), share.job, share.num_jobs, len(todo))
    if todo:
        _run_chunks(model, cfg, plan, todo, source)
    with file_lock(out_dir / stamps.STAMP_NAME):     # serialises merges of one set (the stamp never moves)
        if all(final_complete(out_dir, kind, plan.keys) for kind in plan.kinds):
            return True                   # another job merged the set while this one worked or waited
        waiting = [c for c in range(len(plan.chunks)) if not plan.chunk_done(c)]
        if waiting:
            if merge_only:
                raise UnfinishedUnits(share, {str(out_dir): (first_unit, waiting)})
            log.info("%s: %d chunk(s) left to other jobs; the last job to finish merges", data_dir.name,
                     len(waiting))
            return False
        _merge(plan)
    return True

"""Shared pieces of the fault-injection suite (see README.md): bad audio files, in-process command-line runs
that return (exit code, stdout, stderr), snapshots that prove existing outputs were left alone, read-only
directories and a full disk."""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import subprocess
import types
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest
import soundfile as sf
import torch

import nawsv.utils.atomic as atomic_module
from nawsv.utils.cli import run_main

SR = 16000
REFUSED_AUDIO = ("missing", "empty", "corrupt_header", "nan")   # a stage that decodes audio must refuse these
ODD_AUDIO = ("wrong_rate", "stereo", "short")                   # accepted: resampled, mixed down, padded
NON_UTF8 = os.fsdecode(b"caf\xe9")                              # a Latin-1 name: not valid UTF-8


@pytest.fixture(autouse=True)
def fresh_logging() -> Iterator[None]:
    """Stage entry points attach handlers (stderr, train.log) to the 'nawsv' logger; drop them after each test."""
    yield
    logger = logging.getLogger("nawsv")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny models on a shared 2-core machine are much faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclasses.dataclass
class Outcome:
    """What a command-line run printed and returned."""

    rc: int
    out: str
    err: str


def cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[object], capsys: pytest.CaptureFixture) -> Outcome:
    """Run a stage's ``main`` in-process exactly as ``python -m`` does (run_main; argparse exits included)."""
    capsys.readouterr()
    try:
        rc = run_main(main, [str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return Outcome(rc, captured.out, captured.err)


def assert_user_error(outcome: Outcome, *needles: str) -> str:
    """Exit code 2, no traceback, and a single ``ERROR:`` line, the last one printed, holding every needle."""
    assert outcome.rc == 2, f"exit code {outcome.rc}:\n{outcome.err}"
    assert "Traceback" not in outcome.err, outcome.err
    errors = [line for line in outcome.err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1, outcome.err
    assert outcome.err.rstrip("\n").splitlines()[-1] == errors[0], f"the error is not one line:\n{outcome.err}"
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under ``root``: a failed run must leave both as they were."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """Temporaries of atomic writes and lock files left under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if p.name.endswith((".tmp", ".old", ".lock")))


def write_bad_audio(path: Path, kind: str, seconds: float = 1.0, seed: int = 0) -> Path:
    """An audio file with one fault (``missing`` writes nothing); returns ``path``."""
    rng = np.random.default_rng(seed)
    signal = (0.1 * rng.standard_normal(round(seconds * SR))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = os.fsencode(path)                      # soundfile needs bytes for names that are not UTF-8
    if kind == "missing":
        return path
    if kind == "empty":                             # a valid header that announces zero samples
        sf.write(target, np.zeros(0, np.float32), SR, subtype="PCM_16")
    elif kind == "corrupt_header":
        path.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmX " + rng.bytes(3000))
    elif kind == "nan":
        signal[::SR // 10] = np.nan                 # every 0.1 s, so every crop of a training stage meets one
        signal[SR // 20] = np.inf
        sf.write(target, signal, SR, subtype="FLOAT")
    elif kind == "wrong_rate":
        sf.write(target, signal[: round(seconds * 8000)], 8000, subtype="PCM_16")
    elif kind == "stereo":
        sf.write(target, np.stack([signal, signal[::-1] * np.float32(0.5)], axis=1), SR, subtype="FLOAT")
    elif kind == "short":
        sf.write(target, signal[: round(0.2 * SR)], SR, subtype="PCM_16")
    else:
        raise ValueError(kind)
    return path


def _chattr(flag: str, roots: Sequence[Path]) -> bool:
    if shutil.which("chattr") is None:
        return False
    proc = subprocess.run(["chattr", "-R", flag, *map(str, roots)], capture_output=True)
    return proc.returncode == 0


@contextlib.contextmanager
def read_only(*roots: Path) -> Iterator[None]:
    """Make directory trees unwritable for this process.

    Ordinary users get mode bits without write permission. root ignores mode bits, so there the trees are
    marked immutable (``chattr +i``); where that is impossible the test is skipped rather than passing
    without having tested anything.
    """
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for root in roots for p in [root, *root.rglob("*")]}
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    if not _chattr("+i", roots):
        _chattr("-i", roots)
        pytest.skip("running as root without a working chattr: cannot make a directory read-only")
    try:
        yield
    finally:
        _chattr("-i", roots)


class _FullDiskFile:
    """A file handle that fails as on a full disk (ENOSPC): at the first write, or (``at="flush"``) only when the
    buffered data is flushed, the way a network file system often reports it."""

    def __init__(self, handle, at: str) -> None:
        self._handle = handle
        self._at = at

    def write(self, data) -> int:
        if self._at == "write":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self) -> "_FullDiskFile":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.close()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``disk_full(target_name, at="write")``: from now on every atomic write of a file called ``target_name``
    (None: every file) fails with ENOSPC; returns the temporaries that failed (filled as they fail)."""
    failed: list[str] = []

    def arm(target_name: str | None = None, at: str = "write") -> list[str]:
        real_fdopen = os.fdopen

        def fdopen(fd: int, *args, **kwargs):
            handle = real_fdopen(fd, *args, **kwargs)
            name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))     # .<target name>.<random>.tmp
            if target_name is None or name.startswith(f".{target_name}."):
                failed.append(name)
                return _FullDiskFile(handle, at)
            return handle

        proxy = types.ModuleType("os")
        proxy.__getattr__ = lambda attr: getattr(os, attr)      # type: ignore[method-assign]
        proxy.fdopen = fdopen                                  # type: ignore[attr-defined]
        monkeypatch.setattr(atomic_module, "os", proxy)
        return failed

    return arm


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny speaker model file, as stage 4 writes it (read-only for tests)."""
    from tests.test_extract import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("fault_model") / "avg_model.pt")


def extract_args(model: Path, data_dir: Path, out_dir: Path, *extra: str, workers: int = 0) -> list:
    """Stage-5 arguments for a cheap extraction (2 one-second segments, chunks of 2 utterances)."""
    return ["--model", model, "--data_dir", data_dir, "--out_dir", out_dir, "--device", "cpu",
            "--override", f"num_workers={workers}", "--override", "segments.num=2", "--override",
            "segments.seconds=1.0", "--override", "chunk_size=2", *extra]


def noisy_args(train_data: dict, data_dir: Path, out_root: Path, *extra: str) -> list:
    """Stage-2 arguments for one cheap condition (noise at 0 dB, chunks of 4 utterances)."""
    return ["--data", data_dir, "--out_root", out_root, "--musan", train_data["musan_test"], "--nonspeech",
            train_data["nonspeech"], "--override", "categories=[noise]", "--override", "snrs=[0]", "--override",
            "chunk_size=4", *extra]


def add_utterance(data_dir: Path, key: str, wav: Path, seconds: float = 1.0) -> None:
    """Append one utterance (its own speaker) to a Kaldi dir's wav.scp, utt2spk and utt2dur."""
    from nawsv.formats.kaldi import read_table, write_table

    for name, value in (("wav.scp", str(wav)), ("utt2spk", key.split("/")[0]), ("utt2dur", f"{seconds:.3f}")):
        path = data_dir / name
        if name == "utt2dur" and not path.exists():
            continue
        table = read_table(path, max_fields=None)
        table[key] = value
        write_table(path, table)


@contextlib.contextmanager
def lock_held(directory: Path, name: str, what: str = "stage under test") -> Iterator[None]:
    """Another process holding ``<directory>/<name>`` the way a running stage does."""
    import sys

    from tests.conftest import ROOT

    script = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
              "from nawsv.utils.lock import directory_lock\n"
              "with directory_lock(sys.argv[2], sys.argv[3], name=sys.argv[4]):\n"
              "    print('locked', flush=True); time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(directory), what, name],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()

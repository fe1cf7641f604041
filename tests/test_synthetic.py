"""The synthetic corpus: deterministic bytes, real layouts, disjoint speakers, learnable voices."""
import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf

from nawsv.data.synthetic import MiniCorpusSpec, Session, Voice, make_mini_corpus, synthesize_utterance
from nawsv.utils.seeding import rng_for

SPEC = MiniCorpusSpec(seed=3, dev_speakers=2, test_speakers=2, dev_utts_per_speaker=2, test_utts_per_speaker=2,
                      sessions_per_speaker=1, min_duration=0.5, max_duration=0.8, musan_files_per_category=2,
                      musan_duration=0.5, babble_talkers=2, rirs_per_room=1, nonspeech_files=1)


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    make_mini_corpus(tmp_path / "a", SPEC)
    make_mini_corpus(tmp_path / "b", SPEC)
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len(a) > 10
    make_mini_corpus(tmp_path / "c", MiniCorpusSpec(**{**SPEC.__dict__, "seed": 4}))
    c = digest(tmp_path / "c")
    assert set(c.values()).isdisjoint(a.values())


def test_layout(tiny_corpus: dict[str, Path]) -> None:
    vox = tiny_corpus["voxceleb"]
    dev = {p.relative_to(vox / "dev" / "wav").parts[0] for p in (vox / "dev" / "wav").rglob("*.wav")}
    test_files = list((vox / "test" / "wav").rglob("*.wav"))
    test = {p.relative_to(vox / "test" / "wav").parts[0] for p in test_files}
    assert dev and test and dev.isdisjoint(test)
    assert all(len(p.relative_to(vox / "test" / "wav").parts) == 3 for p in test_files)
    for line in tiny_corpus["trials"].read_text().splitlines():
        label, a, b = line.split()
        assert label in "01" and (label == "1") == (a.split("/")[0] == b.split("/")[0])
        assert a.split("/")[0] in test
    musan = tiny_corpus["musan"]
    for category, subset in (("noise", "free-sound"), ("music", "fma"), ("speech", "librivox")):
        assert sorted(musan.glob(f"{category}/{subset}/{category}-{subset}-*.wav"))
    assert list(tiny_corpus["rirs"].glob("*/Room*/*.wav"))
    assert list(tiny_corpus["nonspeech"].glob("n*.wav"))
    info = sf.info(str(test_files[0]))
    assert info.samplerate == 16000 and info.channels == 1


def test_voices_differ_more_across_than_within_speakers() -> None:
    """Long-term spectra of two utterances of one voice are closer than those of two different voices."""
    def ltas(voice: Voice, seed: int) -> np.ndarray:
        rng = rng_for("ltas", seed)
        x = synthesize_utterance(voice, Session.sample(rng), 2.0, rng)
        spectrum = np.log(np.abs(np.fft.rfft(x.reshape(-1, 400) * np.hanning(400), axis=1)) ** 2 + 1e-8).mean(0)
        return spectrum - spectrum.mean()

    voices = [Voice.sample(rng_for("voice", i)) for i in range(6)]
    within = [np.linalg.norm(ltas(v, 1) - ltas(v, 2)) for v in voices]
    across = [np.linalg.norm(ltas(voices[i], 1) - ltas(voices[i + 1], 2)) for i in range(5)]
    assert np.mean(within) < np.mean(across)

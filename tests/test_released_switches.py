"""Each released-code switch pinned numerically on small inputs against hand or independent computations."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import interpolate, optimize

from nawsv.data.audio import write_audio
from nawsv.data.augment import AugmentConfig, Augmenter, draw_noise, mix_at_snr, reverberate
from nawsv.formats.kaldi import write_table
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.noise_chunks import ChunkedNoiseBank, chunk_spans, open_noise_bank
from nawsv.data.noisy_sets import peak_scale, to_pcm16
from nawsv.data.samplers import pack_pairs, shuffled_pairs, speaker_pair_batches
from nawsv.losses.aam import AAMSoftmax
from nawsv.scoring.metrics import compute_eer, compute_metrics

SR = 16000


# ---- 1. level with the released 1e-4 floor ----

def test_released_level_of_a_quiet_signal() -> None:
    speech = np.full(1000, 1e-3, np.float32)                 # power 1e-6 (-60 dB)
    noise = np.tile(np.array([0.1, -0.1], np.float32), 500)   # power 1e-2 (-20 dB)
    _, exact = mix_at_snr(speech, noise, 0.0)
    _, released = mix_at_snr(speech, noise, 0.0, level_floor=1e-4)
    assert exact == pytest.approx(math.sqrt(1e-6 / 1e-2), rel=1e-6)                  # 0.01: a true 0 dB mix
    assert released == pytest.approx(math.sqrt((1e-6 + 1e-4) / (1e-2 + 1e-4)), rel=1e-6)   # = 0.1 by hand
    assert released == pytest.approx(0.1, rel=1e-6)
    effective = 10 * math.log10(1e-6 / (released ** 2 * 1e-2))
    assert effective == pytest.approx(-20.0, abs=1e-4)       # nominal 0 dB is really -20 dB for this quiet speech
    loud = np.full(1000, 0.5, np.float32)                    # power 0.25: the floor barely matters
    _, gain = mix_at_snr(loud, noise, 10.0, level_floor=1e-4)
    assert gain == pytest.approx(math.sqrt(0.2501 / (0.0101 * 10.0)), rel=1e-6)


# ---- 2. the virtual MUSAN chunk index ----

LENGTHS = {"noise/a-0001": int(7.9 * SR), "noise/b-0003": 8 * SR, "noise/c-0005": 10 * SR,
           "noise/d-0007": 11 * SR, "noise/e-0009": 20 * SR}


@pytest.fixture(scope="module")
def chunk_bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chunks")
    paths = {}
    for number, (key, length) in enumerate(LENGTHS.items()):
        path = root / "audio" / f"{key.split('/')[1]}.wav"
        write_audio(path, ((np.arange(length) % 997) / 997.0 * 0.5 - 0.25 + 0.01 * number).astype(np.float32))
        paths[key] = str(path)
    write_table(root / "wav.scp", paths)
    write_table(root / "utt2cat", {k: "noise" for k in LENGTHS})
    return root


def test_chunk_spans_by_hand() -> None:
    assert chunk_spans(int(7.9 * SR)) == [(0, int(7.9 * SR))]           # < 8 s: whole file
    assert chunk_spans(8 * SR) == [(0, 5 * SR)]                          # floor(3/3) = 1
    assert chunk_spans(10 * SR) == [(0, 5 * SR)]                         # floor(5/3) = 1: window at 3 s dropped
    assert chunk_spans(11 * SR) == [(0, 5 * SR), (3 * SR, 5 * SR)]       # floor(6/3) = 2
    assert [s for s, _ in chunk_spans(20 * SR)] == [0, 3 * SR, 6 * SR, 9 * SR, 12 * SR]   # floor(15/3) = 5


def test_chunk_index_counts_offsets_and_reads(chunk_bank: Path) -> None:
    bank = open_noise_bank(chunk_bank, musan_chunks=True)
    keys = bank.keys("noise")
    assert len(keys) == 1 + 1 + 1 + 2 + 5
    assert keys[:3] == (f"noise/a-0001@0+{int(7.9 * SR)}", f"noise/b-0003@0+{5 * SR}", f"noise/c-0005@0+{5 * SR}")
    assert keys[-1] == f"noise/e-0009@{12 * SR}+{5 * SR}"
    plain = NoiseBank.from_dir(chunk_bank)
    whole = plain.read("noise/e-0009")
    rng = np.random.default_rng(0)
    window, offset = bank.read_window(keys[-1], SR, rng)                 # inside the chunk, offset relative to it
    assert 0 <= offset <= 4 * SR
    np.testing.assert_array_equal(window, whole[12 * SR + offset:12 * SR + offset + SR])
    wrapped = bank.read_at(keys[-1], 8 * SR, 0)                          # 5-s chunk wrap-padded to 8 s
    np.testing.assert_array_equal(wrapped, np.pad(whole[12 * SR:17 * SR], (0, 3 * SR), mode="wrap"))


def test_draws_are_uniform_over_chunks(chunk_bank: Path) -> None:
    bank = ChunkedNoiseBank(NoiseBank.from_dir(chunk_bank))
    rng = np.random.default_rng(1)
    draws = 6000
    counts: dict[str, int] = {}
    for _ in range(draws):
        key = draw_noise(bank, "noise", 160, rng).keys[0]
        counts[key] = counts.get(key, 0) + 1
    assert sorted(counts) == sorted(bank.keys("noise"))
    expected = draws / 10                                                # 10 chunks, each 1/10
    for key, count in counts.items():
        assert abs(count - expected) < 5 * math.sqrt(expected * 0.9), key  # 5 sigma of a binomial
    per_file = {f: sum(c for k, c in counts.items() if k.startswith(f)) / draws for f in LENGTHS}
    assert per_file["noise/e-0009"] == pytest.approx(0.5, abs=0.03)      # 5 of 10 chunks: a long file weighs more
    assert per_file["noise/a-0001"] == pytest.approx(0.1, abs=0.02)


def test_augmenter_uses_the_chunk_index(chunk_bank: Path) -> None:
    cfg = AugmentConfig(prob=1.0, types={"noise": 1.0}, musan_chunks=True)
    _, what = Augmenter(cfg, NoiseBank.from_dir(chunk_bank), None).apply(np.ones(SR, np.float32),
                                                                         np.random.default_rng(0))
    assert "@" in what.keys[0]


# ---- 4. the released RIR path ----

def test_truncated_rir_is_a_direct_convolution() -> None:
    rng = np.random.default_rng(2)
    speech = rng.standard_normal(4000).astype(np.float32)
    rir = np.concatenate([np.zeros(30), rng.standard_normal(300) * np.exp(-np.arange(300) / 60)])
    expected = np.convolve(speech.astype(np.float64), rir / np.sqrt(np.sum(rir ** 2)))[:4000]
    np.testing.assert_allclose(reverberate(speech, rir, "truncated"), expected, atol=1e-5)
    assert not np.allclose(reverberate(speech, rir, "aligned"), expected, atol=1e-2)   # the default aligns


# ---- 5. AAM without the large-angle correction ----

@pytest.mark.parametrize("fix", [True, False])
def test_aam_large_angle_switch(fix: bool) -> None:
    aam = AAMSoftmax(2, 3, margin=0.2, scale=1.0, topk=0, fix_large_angle=fix)
    with torch.no_grad():
        aam.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    theta = 3.0                                                           # theta + m = 3.2 > pi
    embedding = torch.tensor([[math.cos(theta), math.sin(theta)]])
    logit = aam.logits(embedding, torch.tensor([0]))[0, 0].item()
    expected = math.cos(theta) - 0.2 * math.sin(0.2) if fix else math.cos(theta + 0.2)
    assert logit == pytest.approx(expected, abs=1e-6)


# ---- 6. the interpolated EER ----

def _roc_brute_force(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr = [0.0], [0.0]
    for threshold in sorted(set(scores.tolist()), reverse=True):
        accepted = scores >= threshold
        fpr.append(float(np.mean(accepted[~labels])))
        tpr.append(float(np.mean(accepted[labels])))
    return np.array(fpr), np.array(tpr)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interpolated_eer_against_brentq(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels.astype(float), 1.0), 1)         # rounded: many ties
    fpr, tpr = _roc_brute_force(scores, labels)
    curve = interpolate.interp1d(fpr, tpr)
    expected = optimize.brentq(lambda x: 1.0 - x - curve(x), 0.0, 1.0)
    eer, _ = compute_eer(scores, labels, method="roc_interp")
    assert eer == pytest.approx(expected, abs=1e-9)
    assert compute_metrics(scores, labels, eer_method="roc_interp").eer == eer


def test_interpolated_eer_by_hand() -> None:
    # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1); the diagonal 1 - x meets it at the vertical
    # segment x = 0.5; the sweep EER is the mean of FNR and FPR at the best point: (0.5 + 0.5) / 2.
    scores, labels = [4.0, 3.0, 2.0, 1.0], [True, False, True, False]
    assert compute_eer(scores, labels, method="roc_interp")[0] == pytest.approx(0.5)
    # 3 targets, 2 non-targets: (0,0) (0,1/3) (1/2,1/3) (1/2,2/3) (1/2,1) (1,1); 1 - x crosses the vertical
    # run at x = 1/2 (tpr jumps from 1/3 to 1 there)
    scores, labels = [5.0, 4.0, 3.0, 2.0, 1.0], [True, False, True, True, False]
    assert compute_eer(scores, labels, method="roc_interp")[0] == pytest.approx(0.5)
    # a sloped segment: ties between a target and a non-target at the crossing
    scores, labels = [3.0, 2.0, 2.0, 1.0], [True, True, False, False]
    # ROC: (0,0) (0,.5) (.5,1) (1,1); on (0,.5)-(.5,1): tpr = .5 + x, 1 - x = .5 + x -> x = .25
    assert compute_eer(scores, labels, method="roc_interp")[0] == pytest.approx(0.25)
    assert compute_eer(scores, labels)[0] == pytest.approx(0.25)   # sweep: at threshold 2, FNR 0 FPR .5 -> mean


# ---- 7. clipping ----

def test_clipping_switch() -> None:
    mixture = np.array([0.5, 1.5, -2.0], np.float32)
    scale, clipped = peak_scale(mixture, "clip")
    assert (scale, clipped) == (1.0, 2)
    np.testing.assert_array_equal(to_pcm16(mixture, scale), [16384, 32767, -32768])   # saturated, not rescaled
    scale, clipped = peak_scale(mixture, "rescale")
    assert clipped == 2 and scale == pytest.approx((32767 / 32768) / 2.0)


# ---- 8. the released drop-rule sampler ----

def _released_sampler(pairs: list[tuple[int, int, int]], batch: int) -> list[list[tuple[int, int]]]:
    """The clovaai / NAW-SV rule, written independently: keep a pair unless its speaker is in the current block."""
    kept_labels: list[int] = []
    kept: list[tuple[int, int]] = []
    for label, first, second in pairs:
        start = len(kept_labels) // batch * batch
        if label not in kept_labels[start:]:
            kept_labels.append(label)
            kept.append((first, second))
    usable = len(kept) // batch * batch
    return [kept[i:i + batch] for i in range(0, usable, batch)]


def test_drop_rule_sampler() -> None:
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(12), rng.integers(2, 30, size=12))
    pairs = shuffled_pairs(labels, 20, seed=5, epoch=1)
    released = pack_pairs(pairs, 4, "drop")
    assert released == _released_sampler(pairs, 4)
    assert released == speaker_pair_batches(labels, 4, 20, seed=5, epoch=1, clash="drop")
    for batch in released:
        assert len(batch) == 4
        assert len({int(labels[a]) for a, _ in batch}) == 4               # no speaker twice
        assert all(labels[a] == labels[b] for a, b in batch)
    deferred = pack_pairs(pairs, 4, "defer")
    assert len(deferred) > len(released)                                  # waiting pairs are used, not dropped
    used = [p for batch in released for p in batch]
    assert len(used) == len(set(used)) and len(used) % 4 == 0

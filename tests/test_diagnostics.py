"""Warm-up diagnostics on a tiny random WavLM teacher/student: values against a hand computation, a decrease
after hint-loss steps, held-out selection and the diagnostics.tsv record."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nawsv.data.store import UtteranceStore
from nawsv.losses.hint import HintLoss
from nawsv.models.config import SSLConfig
from nawsv.models.heads import WarmupHead
from nawsv.models.ssl import build_student, build_teacher
from nawsv.train.diagnostics import WarmupDiagnostics, hold_out
from nawsv.formats.diagnostics_record import read_diagnostics, record_diagnostics


@pytest.fixture()
def toy():
    torch.manual_seed(0)
    cfg = SSLConfig(preset="tiny", adapter_dim=8)
    student, teacher = build_student(cfg), build_teacher(cfg)
    head = WarmupHead(student.num_hidden_states, student.hidden_size, 16)
    generator = torch.Generator().manual_seed(1)
    clean = torch.randn(6, 8000, generator=generator)
    noisy = clean + 0.5 * torch.randn(6, 8000, generator=generator)
    return student, teacher, head, clean, noisy


def by_hand(student, teacher, head, clean, noisy, lambda_: float = 0.1) -> dict[str, float]:
    """Per utterance and per layer with explicit loops (eval mode, no masking)."""
    student.eval(), teacher.eval(), head.eval()
    with torch.no_grad():
        s_noisy, t_clean, s_clean = student(noisy), teacher(clean), student(clean)
        e_noisy, e_teacher, e_clean = head(s_noisy), head(t_clean), head(s_clean)
    layers = s_noisy.shape[1] - 1
    per_layer = np.zeros(layers)
    cos_student = cos_teacher = 0.0
    for b in range(clean.shape[0]):
        for layer in range(1, layers + 1):
            diff = (s_noisy[b, layer] - t_clean[b, layer]).double()
            per_layer[layer - 1] += float((diff ** 2).sum()) / diff.numel()
        n, c, t = (x[b].double().numpy() for x in (e_noisy, e_clean, e_teacher))
        cos_student += n @ c / np.linalg.norm(n) / np.linalg.norm(c)
        cos_teacher += n @ t / np.linalg.norm(n) / np.linalg.norm(t)
    per_layer /= clean.shape[0]
    weights = np.full(layers, lambda_)
    weights[-1] = 1.0
    out = {f"hint_layer_{i + 1}": v for i, v in enumerate(per_layer)}
    out.update(hint=float(weights @ per_layer), cos_student=cos_student / clean.shape[0],
               cos_teacher=cos_teacher / clean.shape[0])
    return out


def test_values_before_any_step_equal_the_hand_computation_and_the_hint_loss(toy) -> None:
    student, teacher, head, clean, noisy = toy
    student.train(), head.train()
    values = WarmupDiagnostics(student, teacher, head, HintLoss(0.1), clean, noisy, batch_size=4).measure()
    assert student.training and head.training                  # modes restored after measuring
    expected = by_hand(student, teacher, head, clean, noisy)
    assert set(values) == set(expected)
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    with torch.no_grad():
        student.eval()
        loss = HintLoss(0.1)(student(noisy), teacher(clean))
    assert values["hint"] == pytest.approx(float(loss), rel=1e-5)


def test_hint_distance_decreases_after_training_steps_on_the_same_data(toy) -> None:
    student, teacher, head, clean, noisy = toy
    hint = HintLoss(0.1)
    diagnostics = WarmupDiagnostics(student, teacher, head, hint, clean, noisy, batch_size=6)
    before = diagnostics.measure()
    optimiser = torch.optim.Adam(student.parameters(), lr=1e-3)
    student.train()
    for _ in range(15):
        loss = hint(student(noisy), teacher(clean))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = diagnostics.measure()
    assert after["hint"] < 0.7 * before["hint"]
    assert after["hint"] == pytest.approx(by_hand(student, teacher, head, clean, noisy)["hint"], rel=1e-5)


def test_hold_out_takes_one_utterance_of_distinct_speakers_with_three_or_more() -> None:
    speakers = ["a"] * 5 + ["b"] * 2 + ["c"] * 3 + ["d"] * 4
    store = UtteranceStore([f"{s}/{i}" for i, s in enumerate(speakers)], speakers, "list",
                           paths={f"{s}/{i}": "x.wav" for i, s in enumerate(speakers)})
    kept, held = hold_out(store, 2, seed=1)
    assert len(held) == 2 and len({speakers[i] for i in held}) == 2 and "b" not in {speakers[i] for i in held}
    assert sorted(list(kept.keys) + [store.keys[i] for i in held]) == sorted(store.keys)
    assert kept.speakers == [k.split("/")[0] for k in kept.keys]
    assert hold_out(store, 2, seed=1)[1] == held
    assert len(hold_out(store, 10, seed=1)[1]) == 3             # only a, c and d qualify


def test_record_replaces_the_row_of_a_rerun_epoch(tmp_path: Path) -> None:
    path = tmp_path / "diagnostics.tsv"
    for epoch, value in [(0, 1.0), (1, 0.5), (2, 0.25), (1, 0.4)]:
        record_diagnostics(path, epoch, {"hint": value, "hint_layer_2": value, "hint_layer_10": 2 * value,
                                         "cos_student": 0.9, "cos_teacher": 0.8})
    rows = read_diagnostics(path)
    assert [(r["epoch"], r["hint"]) for r in rows] == [(0, 1.0), (1, 0.4), (2, 0.25)]
    assert path.read_text().splitlines()[0].split("\t")[:3] == ["epoch", "hint_layer_2", "hint_layer_10"]

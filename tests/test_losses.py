"""Hint loss, E-APN and AAM-softmax with inter-top-k against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from nawsv.losses.aam import AAMSoftmax, inverse_frequency_weights
from nawsv.losses.eapn import EAPNLoss
from nawsv.losses.hint import HintLoss
from nawsv.losses.registry import LOSSES, build_loss


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))


def _cross_entropy(logits: list[float], target: int) -> float:
    top = max(logits)
    return -(logits[target] - top - math.log(sum(math.exp(z - top) for z in logits)))


# ---------------------------------------------------------------------------------------------- hint


def test_hint_loss_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    batch, states, frames, hidden = 3, 4, 5, 6
    student = torch.randn(batch, states, frames, hidden, generator=g)
    teacher = torch.randn(batch, states, frames, hidden, generator=g)
    expected = 0.0
    for b in range(batch):
        per_sample = 0.0
        for layer in range(1, states):                       # index 0 is not matched
            err = sum((student[b, layer, t, h].item() - teacher[b, layer, t, h].item()) ** 2
                      for t in range(frames) for h in range(hidden)) / (frames * hidden)
            per_sample += (1.0 if layer == states - 1 else 0.1) * err
        expected += per_sample / batch
    assert HintLoss(0.1)(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    loss_bf16 = HintLoss(0.1)(student.bfloat16(), teacher.bfloat16())
    assert loss_bf16.dtype == torch.float32 and loss_bf16.item() == pytest.approx(expected, rel=2e-2)
    with pytest.raises(ValueError, match="hidden states"):
        HintLoss()(student, teacher[:, 1:])


def test_hint_loss_ignores_the_first_state_and_weights_the_last_layer():
    zeros = torch.zeros(2, 3, 4, 5)
    first = zeros.clone()
    first[:, 0] = 7.0
    assert HintLoss(0.1)(first, zeros).item() == 0.0
    middle, last = zeros.clone(), zeros.clone()
    middle[:, 1] = 1.0
    last[:, 2] = 1.0
    assert HintLoss(0.1)(middle, zeros).item() == pytest.approx(0.1)
    assert HintLoss(0.1)(last, zeros).item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- E-APN


def _eapn_by_hand(query: torch.Tensor, anchors: list[torch.Tensor], w: float, b: float) -> float:
    rows = []
    for anchor in anchors:
        for i in range(query.shape[0]):
            logits = [w * _cos(query[i].tolist(), anchor[j].tolist()) + b for j in range(query.shape[0])]
            rows.append(_cross_entropy(logits, i))
    return sum(rows) / len(rows)


def test_eapn_matches_a_hand_written_loop():
    g = torch.Generator().manual_seed(1)
    query = torch.randn(4, 6, generator=g)
    anchors = [torch.randn(4, 6, generator=g) for _ in range(3)]
    loss = EAPNLoss(init_w=10.0, init_b=-5.0)
    assert loss(query, anchors).item() == pytest.approx(_eapn_by_hand(query, anchors, 10.0, -5.0), rel=1e-5)
    loss_no_gather = EAPNLoss(init_w=3.0, init_b=1.0, gather=False)
    assert loss_no_gather(query, anchors).item() == pytest.approx(_eapn_by_hand(query, anchors, 3.0, 1.0), rel=1e-5)


def test_eapn_clamps_the_scale_and_learns_w_and_b():
    query = torch.randn(5, 4)
    anchors = [torch.randn(5, 4), torch.randn(5, 4)]
    clamped = EAPNLoss(init_w=-3.0, init_b=-5.0)
    assert clamped(query, anchors).item() == pytest.approx(math.log(5), abs=1e-4)   # w -> 1e-6: uniform logits
    loss = EAPNLoss()
    loss(query, anchors).backward()
    assert loss.w.grad is not None and loss.b.grad is not None and loss.w.grad.item() != 0.0
    with pytest.raises(ValueError, match="shape"):
        loss(query, [torch.randn(4, 4)])


def test_eapn_low_for_matching_and_high_for_swapped_anchors():
    torch.manual_seed(2)
    query = torch.randn(8, 16)
    assert EAPNLoss()(query, [query, query, query]).item() < 0.01
    assert EAPNLoss()(query, [query.roll(1, 0)] * 3).item() > 5.0


# ---------------------------------------------------------------------------------------------- AAM


def _aam_logits_by_hand(emb: torch.Tensor, centres: torch.Tensor, labels: list[int], margin: float, scale: float,
                        topk: int, topk_margin: float, fix: bool = True) -> list[list[float]]:
    out = []
    for b, y in enumerate(labels):
        cosines = [_cos(emb[b].tolist(), centres[c].tolist()) for c in range(centres.shape[0])]
        others = sorted((c for c in range(len(cosines)) if c != y), key=lambda c: -cosines[c])[:topk]
        row = []
        for c, value in enumerate(cosines):
            theta = math.acos(max(-1.0, min(1.0, value)))
            if c == y:
                if fix and theta + margin > math.pi:
                    row.append(scale * (value - margin * math.sin(margin)))
                else:
                    row.append(scale * math.cos(theta + margin))
            elif c in others:
                row.append(scale * math.cos(theta - topk_margin))
            else:
                row.append(scale * value)
        out.append(row)
    return out


def _aam_example():
    g = torch.Generator().manual_seed(3)
    aam = AAMSoftmax(4, 7, margin=0.2, scale=30.0, topk=2, topk_margin=0.1)
    centres = aam.weight.detach()
    emb = torch.randn(3, 4, generator=g)
    emb[2] = -centres[5] + 0.3 * torch.randn(4, generator=g)      # sample 2: target cosine clearly negative
    labels = [1, 4, 5]
    return aam, emb, labels


def test_aam_topk_logits_match_a_hand_computation_with_a_negative_target_cosine():
    aam, emb, labels = _aam_example()
    label_tensor = torch.tensor(labels)
    cosines = aam.cosines(emb)
    assert cosines[2, 5] < -0.5
    # sample 2's target has the lowest cosine: the original's "x -2" trick would rank it first
    assert (-2 * cosines[2, 5]) > cosines[2].max()
    logits = aam.logits(emb, label_tensor)
    expected = _aam_logits_by_hand(emb, aam.weight.detach(), labels, 0.2, 30.0, 2, 0.1)
    torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-4, rtol=0)
    loss, accuracy = aam(emb, label_tensor)
    by_hand = sum(_cross_entropy(expected[b], y) for b, y in enumerate(labels)) / 3
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    hits = sum(int(cosines[b].argmax().item() == y) for b, y in enumerate(labels))
    assert accuracy.item() == pytest.approx(hits / 3)


def test_aam_large_angle_correction():
    aam = AAMSoftmax(3, 4, margin=0.2, scale=1.0, topk=0)
    emb = -aam.weight.detach()[2:3].clone()                         # theta = pi: theta + m > pi
    fixed = aam.logits(emb, torch.tensor([2]))[0, 2].item()
    assert fixed == pytest.approx(-1.0 - 0.2 * math.sin(0.2), abs=1e-5)
    released = AAMSoftmax(3, 4, margin=0.2, scale=1.0, topk=0, fix_large_angle=False)
    released.weight.data.copy_(aam.weight.data)
    assert released.logits(emb, torch.tensor([2]))[0, 2].item() == pytest.approx(-math.cos(0.2), abs=1e-5)


def test_aam_set_margin_changes_the_loss_and_survives_a_checkpoint():
    aam, emb, labels = _aam_example()
    label_tensor = torch.tensor(labels)
    base, _ = aam(emb, label_tensor)
    assert aam.margin == 0.2
    aam.set_margin(0.4)
    assert aam.margin == 0.4
    larger, _ = aam(emb, label_tensor)
    expected = _aam_logits_by_hand(emb, aam.weight.detach(), labels, 0.4, 30.0, 2, 0.1)
    assert larger.item() == pytest.approx(sum(_cross_entropy(expected[b], y) for b, y in enumerate(labels)) / 3,
                                          rel=1e-5)
    assert larger.item() > base.item()
    fresh = AAMSoftmax(4, 7, margin=0.2, topk=2)
    fresh.load_state_dict(aam.state_dict())
    assert fresh.margin == 0.4


def test_aam_class_weights_follow_pytorch_weighted_mean():
    counts = [3, 1, 2, 6, 4, 2, 2]
    weights = inverse_frequency_weights(counts)
    torch.testing.assert_close(weights, torch.tensor([20 / n for n in counts]))
    aam, emb, labels = _aam_example()
    weighted = AAMSoftmax(4, 7, margin=0.2, scale=30.0, topk=2, topk_margin=0.1, class_weights=weights)
    weighted.weight.data.copy_(aam.weight.data)
    loss, _ = weighted(emb, torch.tensor(labels))
    expected = _aam_logits_by_hand(emb, aam.weight.detach(), labels, 0.2, 30.0, 2, 0.1)
    numerator = sum(20 / counts[y] * _cross_entropy(expected[b], y) for b, y in enumerate(labels))
    denominator = sum(20 / counts[y] for y in labels)
    assert loss.item() == pytest.approx(numerator / denominator, rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        inverse_frequency_weights([3, 0])
    with pytest.raises(ValueError, match="7 entries"):
        AAMSoftmax(4, 7, class_weights=[1.0, 2.0])


def test_loss_registry():
    assert set(LOSSES) == {"aam_softmax", "eapn", "hint"}
    assert isinstance(build_loss("hint", lambda_=0.2), HintLoss)
    with pytest.raises(ValueError, match=r"unknown loss 'aam'; choose from \['aam_softmax', 'eapn', 'hint'\]"):
        build_loss("aam")

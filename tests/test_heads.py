"""Warm-up head and ECAPA-TDNN back-end: hand computations, parameter count, shapes, registry."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nawsv.models.ecapa import AttentiveStatsPooling, EcapaTdnn
from nawsv.models.heads import LayerWeightedSum, WarmupHead
from nawsv.models.registry import BACKENDS, build_backend


def test_warmup_head_matches_a_hand_computation():
    torch.manual_seed(0)
    layers, frames, hidden, embed = 3, 6, 4, 5
    head = WarmupHead(layers, hidden, embed_dim=embed).eval()
    weights = head.layer_sum.weights.detach()
    assert ((weights >= 0) & (weights < 1)).all() and not math.isclose(weights.sum().item(), 1.0)
    with torch.no_grad():
        head.norm.running_mean.uniform_(-1, 1)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 2)
        head.norm.bias.uniform_(-1, 1)
    states = torch.randn(2, layers, frames, hidden, dtype=torch.float64)
    head = head.double()
    with torch.no_grad():
        out = head(states)
    for b in range(2):
        summed = [[sum(weights[layer].item() * states[b, layer, t, h].item() for layer in range(layers))
                   for h in range(hidden)]
                  for t in range(frames)]
        means = [sum(summed[t][h] for t in range(frames)) / frames for h in range(hidden)]
        stds = [math.sqrt(sum((summed[t][h] - means[h]) ** 2 for t in range(frames)) / (frames - 1))
                for h in range(hidden)]
        stats = means + stds
        for e in range(embed):
            linear = (sum(head.linear.weight[e, i].item() * stats[i] for i in range(2 * hidden))
                      + head.linear.bias[e].item())
            norm = head.norm
            expected = ((linear - norm.running_mean[e].item()) / math.sqrt(norm.running_var[e].item() + norm.eps)
                        * norm.weight[e].item() + norm.bias[e].item())
            assert out[b, e].item() == pytest.approx(expected, abs=1e-9)


def test_ecapa_small_parameter_count():
    model = EcapaTdnn(13, 768, channels=512, embed_dim=192)
    c, width, scale = 512, 64, 8
    conv = lambda i, o, k: i * o * k + o        # noqa: E731 - conv/linear weights + bias
    bn = lambda n: 2 * n                        # noqa: E731 - affine weight + bias
    block = (conv(c, c, 1) + bn(c) + (scale - 1) * (conv(width, width, 3) + bn(width)) + conv(c, c, 1) + bn(c)
             + conv(c, 128, 1) + conv(128, c, 1))
    expected = (13 + conv(768, c, 5) + bn(c) + 3 * block + conv(3 * c, 1536, 1)
                + conv(3 * 1536, 256, 1) + bn(256) + conv(256, 1536, 1)
                + bn(3072) + conv(3072, 192, 1) + bn(192))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected == 8_739_469


@pytest.mark.parametrize("frames", [2, 37, 149, 250])
def test_ecapa_output_shapes_for_several_lengths(frames):
    torch.manual_seed(1)
    model = EcapaTdnn(5, 32, channels=64, embed_dim=16)
    states = torch.randn(3, 5, frames, 32)
    model.train()
    out = model(states)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.layer_sum.weights.grad is not None
    model.eval()
    with torch.no_grad():
        assert model(states[:1]).shape == (1, 16)


def test_attentive_pooling_with_uniform_attention_is_mean_and_std():
    pooling = AttentiveStatsPooling(4, attention_dim=8).eval()
    with torch.no_grad():
        pooling.attention[-2].weight.zero_()
        pooling.attention[-2].bias.zero_()
    x = torch.randn(2, 4, 9, dtype=torch.float64)
    pooling = pooling.double()
    with torch.no_grad():
        out = pooling(x)
    for b in range(2):
        for c in range(4):
            values = x[b, c].tolist()
            mean = sum(values) / 9
            var = max(sum(v * v for v in values) / 9 - mean * mean, 1e-4)
            assert out[b, c].item() == pytest.approx(mean, abs=1e-9)
            assert out[b, 4 + c].item() == pytest.approx(math.sqrt(var), abs=1e-9)


def test_attentive_pooling_floors_the_variance():
    pooling = AttentiveStatsPooling(3, attention_dim=4).eval()
    constant = torch.full((1, 3, 5), 2.0)
    with torch.no_grad():
        out = pooling(constant)
    torch.testing.assert_close(out, torch.tensor([[2.0, 2.0, 2.0, 0.01, 0.01, 0.01]]))


def test_backend_registry():
    assert set(BACKENDS) == {"ecapa_tdnn_small", "ecapa_tdnn_wespeaker", "warmup_head"}
    head = build_backend("warmup_head", num_hidden_states=4, hidden_size=8, embed_dim=6)
    assert isinstance(head, WarmupHead)
    with pytest.raises(ValueError, match=r"unknown backend 'ecapa'; choose from \['ecapa_tdnn_small', "
                                        r"'ecapa_tdnn_wespeaker', 'warmup_head'\]"):
        build_backend("ecapa")


def test_attentive_pooling_under_bf16_autocast_keeps_fp32_statistics():
    """Channels whose mean is 1000x their spread (issue 17, finding 7): E[x^2] - mu^2 in bf16 would lose sigma
    entirely; the statistics are computed in fp32 as sum w (x - mu)^2, so only the bf16 attention scores differ."""
    torch.manual_seed(0)
    pooling = AttentiveStatsPooling(6, attention_dim=8).eval()
    x = 100.0 + 0.1 * torch.randn(3, 6, 50)
    with torch.no_grad():
        reference = pooling.double()(x.double())
        pooling.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pooling(x)
    assert got.dtype == torch.float32
    mu, sigma = got[:, :6].double(), got[:, 6:].double()
    assert float((mu - reference[:, :6]).abs().max()) < 2e-3                    # 2e-5 of the mean
    assert float(((sigma - reference[:, 6:]) / reference[:, 6:]).abs().max()) < 0.05   # 5 % of a 0.1 spread
    assert float(reference[:, 6:].min()) > 0.05


def test_layer_sum_under_bf16_autocast_is_fp32_before_the_instance_norm():
    """Channels whose mean is 100x their spread (issue 21, item 3): a bf16 weighted sum is rounded in steps of
    ~0.5 at 100, so ECAPA's InstanceNorm would standardise rounding noise; in fp32 it matches float64."""
    torch.manual_seed(0)
    layer_sum = LayerWeightedSum(4)
    norm = nn.InstanceNorm1d(6)
    states = 100.0 + torch.randn(2, 4, 50, 6)
    with torch.no_grad():
        reference = norm(layer_sum.double()(states.double()).transpose(1, 2))
        layer_sum.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            summed = layer_sum(states)
            got = norm(summed.transpose(1, 2))
    assert summed.dtype == torch.float32
    assert float((got.double() - reference).abs().max()) < 1e-3            # in standard deviations
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):     # what the bf16 sum gave (the bug)
        rounded = torch.einsum("l,blth->bth", layer_sum.weights.bfloat16(), states.bfloat16())
    assert float((norm(rounded.float().transpose(1, 2)).double() - reference).abs().max()) > 0.1

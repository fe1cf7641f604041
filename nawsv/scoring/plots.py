"""Stage-7 figures: EER versus SNR per category, and DET curves on normal-deviate axes.

matplotlib (Agg backend) and scipy are imported only inside these functions, so importing the scoring
package never pulls in a plotting stack.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from nawsv.utils.atomic import atomic_write_bytes

DET_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path, dpi: int) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def plot_eer_vs_snr(path: str | Path, panels: Sequence[tuple[str, dict[str, list[tuple[int, float]]], float | None]],
                    ylabel: str, dpi: int = 120) -> None:
    """One panel per trial list: a line per category over SNR, and the clean EER as a dashed line."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 3.8), squeeze=False)
    for axis, (title, lines, clean) in zip(axes[0], panels, strict=True):
        for category, points in lines.items():
            snrs, values = zip(*sorted(points), strict=True)
            axis.plot(snrs, values, marker="o", label=category)
        if clean is not None:
            axis.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
        axis.set_xticks(sorted({snr for points in lines.values() for snr, _ in points}))
        axis.set_xlabel("SNR (dB)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    _save(figure, Path(path), dpi)
    plt.close(figure)


def plot_det(path: str | Path, curves: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str,
             dpi: int = 120) -> None:
    """DET curves ``(label, fpr, fnr)`` with both axes on the normal-deviate (probit) scale."""
    from scipy.stats import norm

    plt = _pyplot()
    positive = [v for _, fpr, fnr in curves for v in (fpr[fpr > 0].min(initial=1), fnr[fnr > 0].min(initial=1))]
    low = float(np.clip(min(positive, default=0.01) / 2, 5e-4, 0.01))
    high = 0.5 if all(np.min(np.maximum(fpr, fnr)) < 0.25 for _, fpr, fnr in curves) else 0.99
    ticks = [t for t in DET_TICKS if low <= t <= high]
    figure, axis = plt.subplots(figsize=(5.0, 5.0))
    for label, fpr, fnr in curves:
        axis.plot(norm.ppf(np.clip(fpr, low / 2, 1 - low / 2)), norm.ppf(np.clip(fnr, low / 2, 1 - low / 2)),
                  label=label, linewidth=1.2)
    limits = (norm.ppf(low), norm.ppf(high))
    axis.plot(limits, limits, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlim(*limits)
    axis.set_ylim(*limits)
    axis.set_xticks(norm.ppf(ticks))
    axis.set_yticks(norm.ppf(ticks))
    axis.set_xticklabels([f"{100 * t:g}" for t in ticks])
    axis.set_yticklabels([f"{100 * t:g}" for t in ticks])
    axis.set_xlabel("false acceptance rate (%)")
    axis.set_ylabel("false rejection rate (%)")
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small", loc="upper right")
    _save(figure, Path(path), dpi)
    plt.close(figure)


def plot_warmup_diagnostics(path: str | Path, rows: Sequence[dict[str, float]], dpi: int = 120) -> None:
    """Hint distance per layer (left) and clean/noisy embedding cosines (right) over warm-up epochs."""
    plt = _pyplot()
    epochs = [int(row["epoch"]) for row in rows]
    layers = sorted((k for k in rows[0] if k.startswith("hint_layer_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    figure, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(layers), 1)))
    for colour, key in zip(colours, layers, strict=True):
        left.plot(epochs, [row[key] for row in rows], color=colour, linewidth=1, label=f"layer {key.rsplit('_', 1)[1]}")
    left.plot(epochs, [row["hint"] for row in rows], color="black", linewidth=2, label="hint (weighted)")
    left.set_yscale("log")
    left.set_title("student (noisy) vs teacher (clean): MSE")
    right.plot(epochs, [row["cos_student"] for row in rows], marker="o", label="student clean vs noisy")
    right.plot(epochs, [row["cos_teacher"] for row in rows], marker="s", label="teacher clean vs student noisy")
    right.set_title("cosine of warm-up head embeddings")
    for axis in (left, right):
        axis.set_xlabel("epoch (0 = before warm-up)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="x-small", ncol=2 if axis is left and len(layers) > 6 else 1)
    _save(figure, Path(path), dpi)
    plt.close(figure)


def plot_compare_eer_vs_snr(path: str | Path,
                            panels: Sequence[tuple[str, dict[str, list[tuple[int, float, float, float]]],
                                                   dict[str, float]]],
                            ylabel: str, dpi: int = 120) -> None:
    """One panel per category: a line per experiment over SNR with its interval as error bars, and each
    experiment's clean value as a dashed line of the same colour."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for axis, (title, lines, cleans) in zip(axes[0], panels, strict=True):
        for position, (name, points) in enumerate(lines.items()):
            snrs, values, lows, highs = (np.array(v) for v in zip(*points, strict=True))
            shift = (position - (len(lines) - 1) / 2) * 0.3          # keep overlapping error bars apart
            bars = axis.errorbar(snrs + shift, values, yerr=[values - lows, highs - values], marker="o", capsize=3,
                                 label=name)
            if name in cleans:
                axis.axhline(cleans[name], color=bars[0].get_color(), linestyle="--", linewidth=1)
        axis.set_xticks(sorted({snr for points in lines.values() for snr, *_ in points}))
        axis.set_xlabel("SNR (dB)")
        axis.set_title(title, fontsize="medium")
        axis.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][0].legend(fontsize="small")
    _save(figure, Path(path), dpi)
    plt.close(figure)

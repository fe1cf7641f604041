"""Results tables: ``results.tsv`` (one row per trial list x condition x method) and ``results.md``.

The markdown shows, per trial list, the clean row of every method and category x SNR grids of the noisy
conditions, and says in words exactly which cells enter every average (the paper's own noisy average is
ambiguous: spec section 6.3).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from nawsv.scoring.conditions import CLEAN
from nawsv.scoring.config import METHOD_DESCRIPTIONS, MUSAN_CATEGORIES
from nawsv.scoring.metrics import EER_DESCRIPTIONS
from nawsv.utils.atomic import atomic_open
from nawsv.utils.errors import DataError

BASE_COLUMNS = ("trials", "set", "condition", "category", "snr", "method", "num_trials", "eer_percent")
DROPPED_COLUMN = "resamples_dropped"     # after the interval columns: resamples without a target or non-target
MISSING = "-"


def dcf_column(p_target: float) -> str:
    return f"mindcf_{p_target:g}"


def interval_columns(p_targets: Sequence[float]) -> tuple[str, ...]:
    """``eer_percent_low eer_percent_high mindcf_<p>_low ...``: the bootstrap interval of every metric column."""
    names = ("eer_percent",) + tuple(dcf_column(p) for p in p_targets)
    return tuple(f"{name}_{end}" for name in names for end in ("low", "high"))


Interval = tuple[float, float]


@dataclasses.dataclass(frozen=True)
class ResultRow:
    """Metrics of one trial list scored one way in one condition (EER and minDCF as fractions)."""

    trials: str
    set_name: str
    condition: str
    category: str | None
    snr: int | None
    method: str
    num_trials: int
    eer: float
    min_dcf: dict[float, float]
    intervals: dict[str, Interval] = dataclasses.field(default_factory=dict)   # metric -> (low, high), row units
    resamples_dropped: int | None = None     # bootstrap resamples left out of the intervals (None: no bootstrap)

    def interval(self, name: str) -> Interval | None:
        """The bootstrap interval of ``metric(name)`` in the same units (EER in percent), or None."""
        found = self.intervals.get(name)
        if found is None or name != "eer":
            return found
        return 100.0 * found[0], 100.0 * found[1]

    def metric(self, name: str) -> float:
        """``"eer"`` in percent, or ``"mindcf_<p>"``."""
        if name == "eer":
            return 100.0 * self.eer
        for p, value in self.min_dcf.items():
            if dcf_column(p) == name:
                return value
        raise KeyError(f"unknown metric {name!r}; have eer, {', '.join(dcf_column(p) for p in self.min_dcf)}")


def write_results_tsv(path: str | Path, rows: Sequence[ResultRow], p_targets: Sequence[float]) -> None:
    """One tab-separated row per result, with a header line; interval columns when the rows have intervals; atomic."""
    with_intervals = any(row.intervals or row.resamples_dropped is not None for row in rows)
    header = BASE_COLUMNS + tuple(dcf_column(p) for p in p_targets)
    with atomic_open(path) as handle:
        handle.write("\t".join(header + ((*interval_columns(p_targets), DROPPED_COLUMN) if with_intervals else ()))
                     + "\n")
        for row in rows:
            fields = [row.trials, row.set_name, row.condition, row.category or MISSING,
                      MISSING if row.snr is None else str(row.snr), row.method, str(row.num_trials),
                      f"{100.0 * row.eer:.4f}"] + [f"{row.min_dcf[p]:.6f}" for p in p_targets]
            if with_intervals:
                for name, digits in [("eer", 4)] + [(dcf_column(p), 6) for p in p_targets]:
                    bounds = row.interval(name) or (math.nan, math.nan)
                    fields += [f"{bound:.{digits}f}" for bound in bounds]
                fields.append(MISSING if row.resamples_dropped is None else str(row.resamples_dropped))
            handle.write("\t".join(fields) + "\n")


def read_results_tsv(path: str | Path) -> list[ResultRow]:
    """Parse a ``results.tsv`` written by :func:`write_results_tsv`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; run stage 6 (scoring) first")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; rerun stage 6") from None
    reader = csv.reader(text.splitlines(), delimiter="\t")
    header = next(reader, None)
    if header is None or tuple(header[:len(BASE_COLUMNS)]) != BASE_COLUMNS:
        raise DataError(f"{path}: the header is not {' '.join(BASE_COLUMNS)} mindcf_<p>...; rerun stage 6")
    dropped = header[-1] == DROPPED_COLUMN
    extra = header[len(BASE_COLUMNS):len(header) - dropped]
    dcf_names = [name for name in extra if not name.endswith(("_low", "_high"))]
    try:
        p_targets = [float(name.removeprefix("mindcf_")) for name in dcf_names]
    except ValueError:
        raise DataError(f"{path}: the header names unknown columns {dcf_names}; rerun stage 6") from None
    bounds = extra[len(dcf_names):]
    if bounds and bounds != list(interval_columns(p_targets)):
        raise DataError(f"{path}: the interval columns are not {' '.join(interval_columns(p_targets))}; rerun stage 6")
    rows = []
    for number, fields in enumerate(reader, 2):
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} tab-separated fields, got {len(fields)}")
        try:
            rows.append(ResultRow(
                trials=fields[0], set_name=fields[1], condition=fields[2],
                category=None if fields[3] == MISSING else fields[3],
                snr=None if fields[4] == MISSING else int(fields[4]), method=fields[5],
                num_trials=int(fields[6]), eer=float(fields[7]) / 100.0,
                min_dcf={p: float(v) for p, v in zip(p_targets, fields[len(BASE_COLUMNS):][:len(p_targets)],
                                                     strict=True)},
                intervals=_parse_intervals(fields[len(BASE_COLUMNS) + len(p_targets):len(fields) - dropped], p_targets),
                resamples_dropped=int(fields[-1]) if dropped and fields[-1] != MISSING else None))
        except ValueError as exc:
            raise DataError(f"{path}:{number}: malformed number ({exc}); rerun stage 6") from None
    return rows


def _parse_intervals(fields: Sequence[str], p_targets: Sequence[float]) -> dict[str, Interval]:
    names = ["eer"] + [dcf_column(p) for p in p_targets]
    values = [float(v) for v in fields]
    out = {}
    for position, name in enumerate(names if values else ()):
        low, high = values[2 * position], values[2 * position + 1]
        if not (math.isnan(low) or math.isnan(high)):
            out[name] = (low / 100.0, high / 100.0) if name == "eer" else (low, high)
    return out


# ---- averages over the category x SNR grid ----

def _snr_phrase(snrs: Iterable[int]) -> str:
    return "/".join(str(s) for s in snrs) + " dB"


def cells_phrase(cells: Sequence[tuple[str, int]], categories: Sequence[str], snrs: Sequence[int]) -> str:
    """Words for a set of grid cells, e.g. "the 15 cells noise/music/babble x 0/5/10/15/20 dB"."""
    cats = [c for c in categories if any(cell[0] == c for cell in cells)]
    levels = [s for s in snrs if any(cell[1] == s for cell in cells)]
    text = f"the {len(cells)} cell{'s' if len(cells) != 1 else ''} {'/'.join(cats)} x {_snr_phrase(levels)}"
    missing = [(c, s) for c in cats for s in levels if (c, s) not in set(cells)]
    if missing:
        text += " that exist (missing: " + ", ".join(f"{c} {s} dB" for c, s in missing) + ")"
    return text


def mean_of(grid: dict[tuple[str, int], float], cells: Iterable[tuple[str, int]]) -> float | None:
    values = [grid[cell] for cell in cells if cell in grid]
    return float(np.mean(values)) if values else None


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Which categories and SNRs a grid shows, and the groups that get a mean row."""

    categories: list[str]
    snrs: list[int]
    musan: list[str]        # noise/music/babble present
    extra: list[str]        # other categories present (e.g. nonspeech)

    @classmethod
    def of(cls, cells: Iterable[tuple[str, int]], categories: Sequence[str], snrs: Sequence[int]) -> "GridLayout":
        cells = list(cells)
        present_cats = [c for c in categories if any(cell[0] == c for cell in cells)]
        present_cats += sorted({c for c, _ in cells} - set(present_cats))
        present_snrs = [s for s in snrs if any(cell[1] == s for cell in cells)]
        present_snrs += sorted({s for _, s in cells} - set(present_snrs))
        musan = [c for c in present_cats if c in MUSAN_CATEGORIES]
        return cls(present_cats, present_snrs, musan, [c for c in present_cats if c not in MUSAN_CATEGORIES])

    def groups(self) -> list[tuple[str, list[str]]]:
        """(label, categories) of every mean row: MUSAN-only, and all categories when others exist."""
        out = []
        if self.musan:
            out.append((f"mean ({'/'.join(self.musan)})", self.musan))
        if self.extra:
            out.append((f"mean ({'/'.join(self.categories)})", self.categories))
        return out


def _fmt(value: float | None, digits: int, interval: Interval | None = None) -> str:
    """``9.444`` or, with a bootstrap interval, ``9.444 [6.389, 12.778]``."""
    if value is None:
        return MISSING
    if interval is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


CellInterval = Callable[[list[tuple[str, int]]], "Interval | None"]
MeanInterval = Callable[[str, str, str, list[str]], "Interval | None"]   # (trials, method, metric, conditions)


def grid_markdown(grid: dict[tuple[str, int], float], layout: GridLayout, digits: int,
                  interval: CellInterval | None = None) -> list[str]:
    """A category x SNR table with a mean column and mean rows; ``interval(cells)`` gives the bootstrap interval
    of a cell or of a mean over cells."""
    lines = ["| category | " + " | ".join(f"{s} dB" for s in layout.snrs) + " | mean |",
             "|---" * (len(layout.snrs) + 2) + "|"]

    def cell(cells: list[tuple[str, int]]) -> str:
        present = [c for c in cells if c in grid]
        value = mean_of(grid, present)
        return _fmt(value, digits, interval(present) if interval is not None and present else None)

    def row(label: str, cats: Sequence[str]) -> str:
        per_snr = [cell([(c, s) for c in cats]) for s in layout.snrs]
        return f"| {label} | " + " | ".join(per_snr) + f" | {cell([(c, s) for c in cats for s in layout.snrs])} |"

    for category in layout.musan:
        lines.append(row(category, [category]))
    groups = layout.groups()
    if layout.musan:
        lines.append(row(f"**{groups[0][0]}**", groups[0][1]))
    for category in layout.extra:
        lines.append(row(category, [category]))
    if layout.extra:
        lines.append(row(f"**{groups[-1][0]}**", groups[-1][1]))
    return lines


def grid_notes(cells: Iterable[tuple[str, int]], layout: GridLayout) -> list[str]:
    """Sentences that say exactly which cells enter each mean of :func:`grid_markdown`."""
    cells = set(cells)
    lines = [f"- *mean* column of a category row: the mean of that category's cells at {_snr_phrase(layout.snrs)}."]
    for label, cats in layout.groups():
        members = [(c, s) for c in cats for s in layout.snrs if (c, s) in cells]
        why = ""
        if set(cats) == set(MUSAN_CATEGORIES):
            why = " (the paper's logged noisy average is this mean over its 15 MUSAN cells at 0-20 dB)"
        elif layout.extra:
            why = (" (the README's noisy claim may average such extra categories too; the paper's averaging is "
                   "unresolved, spec section 6.3)")
        lines.append(f"- *{label}* row: per SNR, the mean over {'/'.join(cats)}; its *mean* cell is the mean of "
                     f"{cells_phrase(members, layout.categories, layout.snrs)}{why}.")
    return lines


# ---- results.md ----

def _trial_counts(rows: Sequence[ResultRow]) -> int:
    return rows[0].num_trials if rows else 0


def _clean_table(rows: Sequence[ResultRow], p_targets: Sequence[float]) -> list[str]:
    header = "| method | EER (%) | " + " | ".join(f"minDCF({p:g})" for p in p_targets) + " | scoring |"
    lines = [header, "|---" * (len(p_targets) + 3) + "|"]
    for row in rows:
        dcfs = " | ".join(_fmt(row.min_dcf[p], 4, row.interval(dcf_column(p))) for p in p_targets)
        lines.append(f"| {row.method} | {_fmt(100 * row.eer, 3, row.interval('eer'))} | {dcfs} | "
                     f"{METHOD_DESCRIPTIONS.get(row.method, '')} |")
    return lines


def condition_name(cell: tuple[str, int]) -> str:
    return f"{cell[0]}_{cell[1]}"


def _method_summary(rows: Sequence[ResultRow], methods: Sequence[str], layout: GridLayout,
                    interval: MeanInterval | None) -> list[str]:
    groups = layout.groups()
    header = "| method | clean | " + " | ".join(label for label, _ in groups) + " |"
    lines = [header, "|---" * (len(groups) + 2) + "|"]
    for method in methods:
        mine = [r for r in rows if r.method == method]
        if not mine:
            continue
        clean = next((r for r in mine if r.condition == CLEAN), None)
        grid = {(r.category, r.snr): r.metric("eer") for r in mine if r.category is not None}
        means = []
        for _, cats in groups:
            cells = [(c, s) for c in cats for s in layout.snrs if (c, s) in grid]
            bounds = (interval(mine[0].trials, method, "eer", [condition_name(c) for c in cells])
                      if interval is not None and cells else None)
            means.append(_fmt(mean_of(grid, cells), 3, bounds))
        clean_text = MISSING if clean is None else _fmt(100 * clean.eer, 3, clean.interval("eer"))
        lines.append(f"| {method} | {clean_text} | " + " | ".join(means) + " |")
    return lines


def results_markdown(rows: Sequence[ResultRow], *, title: str, methods: Sequence[str], p_targets: Sequence[float],
                     categories: Sequence[str], snrs: Sequence[int], noisy_method: str,
                     notes: Sequence[str] = (), unlabelled: Sequence[str] = (),
                     interval: MeanInterval | None = None, eer_method: str = "sweep",
                     protocol: Sequence[str] = ()) -> str:
    """The human-readable results: clean rows, noisy grids (EER and each minDCF) and their averages.

    ``interval`` gives the bootstrap interval of a cell or a mean of cells (shown in brackets). ``protocol``
    holds the lines that name the protocol and the switches differing from the released code
    (:func:`nawsv.protocol.summary_lines`); they come first, so no table is read without them.
    """
    out = [f"# {title}", ""] + list(protocol) + ([""] if protocol else [])
    out += [f"EER in %, minDCF normalised (C_miss = C_fa = 1). A trial is accepted when score >= threshold; EER "
            f"(`eer: {eer_method}`) is {EER_DESCRIPTIONS[eer_method]}.", ""]
    out += [f"- {note}" for note in notes]
    if notes:
        out.append("")
    for name in dict.fromkeys(r.trials for r in rows):
        mine = [r for r in rows if r.trials == name]
        clean = [r for r in mine if r.condition == CLEAN]
        noisy = [r for r in mine if r.condition != CLEAN]
        out += [f"## Trials {name} ({_trial_counts(mine)} trials)", ""]
        if clean:
            out += [f"### Clean ({clean[0].set_name})", ""] + _clean_table(clean, p_targets) + [""]
        if not noisy:
            continue
        grid_method = noisy_method
        if not any(r.method == grid_method for r in noisy):
            grid_method = next(m for m in methods if any(r.method == m for r in noisy))
            out += [f"**Note:** no `{noisy_method}` scores for the noisy conditions (segment embeddings missing?); "
                    f"the grids below use `{grid_method}` instead.", ""]
        chosen = [r for r in noisy if r.method == grid_method]
        layout = GridLayout.of(((r.category, r.snr) for r in chosen), categories, snrs)
        protocol = "the paper's noisy protocol" if grid_method == "segment" else "not the paper's noisy protocol"
        metrics = [("eer", "EER (%)", 3)] + [(dcf_column(p), f"minDCF({p:g})", 4) for p in p_targets]
        for position, (metric, label, digits) in enumerate(metrics):
            grid = {(r.category, r.snr): r.metric(metric) for r in chosen}
            cells_interval = None
            if interval is not None:
                def cells_interval(cells, metric=metric):
                    return interval(name, grid_method, metric, [condition_name(c) for c in cells])
            out += [f"### Noisy conditions: {label}, `{grid_method}` scoring ({protocol})", ""]
            out += grid_markdown(grid, layout, digits, cells_interval) + [""]
            out += (grid_notes(grid, layout) if position == 0 else ["Means over the same cells as for EER."]) + [""]
        out += ["### EER (%) per method: clean and noisy means (same cells as above)", ""]
        out += _method_summary(mine, methods, layout, interval) + [""]
    for name in unlabelled:
        out += [f"## Trials {name}", "", "Unlabelled trial list: scores written, no metrics.", ""]
    return "\n".join(out).rstrip() + "\n"

"""Every difference between nawsv and the released NAW-SV code, with the config switch that undoes it.

This table is the one place the protocol is defined: the README's difference table
(:func:`markdown_table`), the check that the recipe's ``released`` configs really select the released
behaviour, and the records every stage writes (``protocol.yaml``: the protocol name and the switches whose
value differs from the released code) all derive from :data:`DIFFERENCES`.

A switch is a key of one stage's config: ``noisy`` (stage 2, ``NoisySetConfig``), ``warmup`` (stage 3),
``finetune`` (stage 4) or ``score`` (stage 6). Records name it ``<stage>.<key>`` (``warmup.teacher_input``).
A run's protocol is ``released`` when every switch of its stages has the released value, ``nawsv`` when every
one has nawsv's value, and ``custom`` otherwise.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from nawsv.utils.atomic import write_text_if_changed
from nawsv.utils.records import read_record

RECORD_NAME = "protocol.yaml"
STAGES = ("noisy", "warmup", "finetune", "score")


@dataclasses.dataclass(frozen=True)
class Switch:
    """One config key of one stage, with its value in the released code and in nawsv's default protocol."""

    stage: str
    key: str
    released: Any
    nawsv: Any

    @property
    def name(self) -> str:
        return f"{self.stage}.{self.key}"


@dataclasses.dataclass(frozen=True)
class Difference:
    """One behaviour of the released code that nawsv changes, why, and the switches that restore it."""

    released: str
    nawsv: str
    why: str
    spec: str
    switches: tuple[Switch, ...] = ()


def _each(stages: Iterable[str], key: str, released: Any, nawsv: Any) -> tuple[Switch, ...]:
    return tuple(Switch(stage, key, released, nawsv) for stage in stages)


DIFFERENCES: tuple[Difference, ...] = (
    Difference("level P = 10 log10(mean(x^2) + 1e-4) for speech and noise",
               "P = mean(x^2), no floor: the SNR is exact",
               "the floor raises the level of quiet signals (babble, quiet noise files, quiet utterances), so their "
               "effective SNR is not the nominal one", "2.2, 7.2-9",
               (Switch("noisy", "level_floor", 1e-4, 0.0),)
               + _each(("warmup", "finetune"), "augment.level_floor", 1e-4, 0.0)),
    Difference("MUSAN cut into 5-s pieces every 3 s (files < 8 s whole), drawn uniformly over pieces, a short "
               "piece wrap-padded", "drawn uniformly over files, a random window of the original file",
               "every file is equally likely and a long test utterance gets a contiguous noise window instead of "
               "a repeated 5-s piece (both are virtual: MUSAN is never copied)", "5.2, 5.3",
               (Switch("noisy", "musan_chunks", True, False),)
               + _each(("warmup", "finetune"), "augment.musan_chunks", True, False)),
    Difference("LayerDrop of the checkpoint (0.05 for Base+) whenever the student is in train mode; a dropped "
               "layer repeats the previous hidden state in the 13-state list; every rank drops the same layers "
               "(numpy seeded alike on every rank)",
               "the same rate and rule (`null` = the checkpoint's value; 0 turns it off), drawn from a per-step "
               "seed shared by all ranks; a layer dropped everywhere gets no gradient",
               "none in the method; the draws no longer hang on numpy's global state, so they repeat on resume "
               "and do not change with the GPU count (nawsv used to force 0, then drew per rank)", "1, 2.5, 3, 4.3",
               _each(("warmup", "finetune"), "ssl.layerdrop", None, None)),
    Difference("student's positional convolution, encoder LayerNorm and mask embedding left at random init",
               "a complete copy of the pre-trained model (every key checked)",
               "the released student lost pre-trained weights; reproduce it only to compare like with like with the "
               "released logs (never a default)", "2.5, 7.2-2",
               _each(("warmup", "finetune"), "ssl.init", "released_partial", "full")),
    Difference("RIR at unit energy, full convolution cut to the input length", "RIR aligned on its direct path, "
               "output re-levelled to the dry signal's power",
               "the released output is delayed by the RIR's onset and its level depends on the room", "2.3",
               (Switch("finetune", "augment.rir_mode", "truncated", "aligned"),)),
    Difference("AAM target logit cos(theta + m) for every angle", "ArcFace fallback cos(theta) - m sin(m) when "
               "theta + m > pi", "cos(theta + m) rises again beyond pi - m and pushes such targets away; only the "
               "first steps of training reach it", "2.8",
               (Switch("finetune", "loss.fix_large_angle", False, True),)),
    Difference("EER from the interpolated ROC curve (sklearn + brentq)", "EER at the sweep threshold, no "
               "interpolation", "the value is a point of the score list, exactly reproducible from a score file; "
               "results.md names the form used", "5.1",
               (Switch("score", "eer", "roc_interp", "sweep"),)),
    Difference("noisy test mixtures that exceed full scale saturate when written as 16-bit",
               "such a mixture is scaled down as a whole to full scale (recorded in the manifest)",
               "clipping distorts the 0 dB cells; scaling speech and noise together keeps the SNR", "5.2",
               (Switch("noisy", "clipping", "clip", "rescale"),)),
    Difference("warm-up sampler drops a pair whose speaker is already in the global batch",
               "the pair waits for the next batch", "more of the data is used per epoch", "3.1",
               (Switch("warmup", "data.pair_clash", "drop", "defer"),)),
    Difference("teacher gets the noisy copy of utterance 2 (in-place noise injection)", "teacher gets the clean "
               "copy", "the paper's method: a clean teacher guides a noisy student", "3.2, 7.2-1",
               (Switch("warmup", "teacher_input", "noisy", "clean"),)),
    Difference("E-APN negatives = the local GPU batch", "embeddings all-gathered with gradient: the global batch",
               "results no longer depend on the number of GPUs", "2.8, 7.2-4",
               (Switch("warmup", "loss.global_negatives", False, True),)),
    Difference("class-weighted AAM: each GPU takes the weighted mean over its own crops, then gradients are "
               "averaged", "sum of w·loss over the global batch divided by its global sum of weights",
               "the released update depends on the GPU count (at one crop per GPU the class weights cancel)",
               "2.8, 7.2-4", (Switch("finetune", "loss.class_weight_norm", "per_rank", "global"),)),
    Difference("large-margin stage sets the margin on the DDP wrapper: it stays 0.2", "the margin becomes 0.4",
               "the paper's intent", "4.3, 7.2-3",
               (Switch("finetune", "large_margin", 0.2, 0.4),)),
    Difference("fp32 everywhere", "bf16 autocast on CUDA (losses and cosines in fp32)", "speed and memory on "
               "current GPUs; CPU runs fp32 either way", "1, 7.3",
               _each(("warmup", "finetune"), "run.precision", "fp32", "bf16")),
    Difference("target class could be picked as a top-k hard negative (cosine < 0)", "the target is never a "
               "top-k candidate", "no switch: an early-training slip of the released code", "2.8, 7.2-7"),
    Difference("noisy test sets unseeded, made once per machine", "seeded per (seed, condition, utterance), a "
               "manifest per condition", "no switch: unseeded sets cannot be reproduced", "5.2, 7.3"),
    Difference("reported numbers = best epoch on the test trials", "last epoch or the average of the last N "
               "checkpoints", "selecting on the test set is optimistic; the report may add the best test epoch "
               "as a separate labelled line", "6.3, 7.3"),
)


def all_switches(stages: Iterable[str] = STAGES) -> list[Switch]:
    """The switches of ``stages``, in table order."""
    wanted = set(stages)
    return [s for d in DIFFERENCES for s in d.switches if s.stage in wanted]


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted ``key`` in a config dataclass (tuples as lists, as in the saved YAML)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def switch_values(stage: str, cfg: Any) -> dict[str, Any]:
    """``{<stage>.<key>: value}`` of every switch of ``stage`` in a resolved config."""
    return {s.name: config_value(cfg, s.key) for s in all_switches([stage])}


def protocol_name(values: Mapping[str, Any]) -> str:
    """released / nawsv / custom for switch values keyed by ``<stage>.<key>``."""
    switches = [s for s in all_switches() if s.name in values]
    if all(values[s.name] == s.released for s in switches):
        return "released"
    if all(values[s.name] == s.nawsv for s in switches):
        return "nawsv"
    return "custom"


def differs_from_released(values: Mapping[str, Any]) -> dict[str, Any]:
    """The switches whose value is not the released one, with their value."""
    return {s.name: values[s.name] for s in all_switches() if s.name in values and values[s.name] != s.released}


def make_record(values: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The content of a ``protocol.yaml``: ``protocol``, ``differs_from_released`` and every switch value."""
    return {"protocol": protocol_name(values), "differs_from_released": differs_from_released(values),
            "switches": dict(values), **extra}


def write_record(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write a record atomically; an unchanged one is left alone (a rerun touches no finished output)."""
    path = Path(path)
    write_text_if_changed(path, yaml.safe_dump(dict(record), sort_keys=False))
    return path


def write_stage_record(directory: str | Path, stage: str, cfg: Any) -> Path:
    """Write ``<directory>/protocol.yaml`` for one stage's resolved config."""
    return write_record(Path(directory) / RECORD_NAME, make_record(switch_values(stage, cfg), stages=[stage]))


def read_protocol_record(path: str | Path) -> dict[str, Any] | None:
    """A ``protocol.yaml``, or None when it does not exist."""
    return read_record(Path(path), "a nawsv protocol record", "delete it and rerun the stage that wrote it",
                       lambda d: isinstance(d.get("switches"), dict) and "protocol" in d)


def summary_lines(record: Mapping[str, Any]) -> list[str]:
    """Sentences for results.md and report.md: the protocol and every switch that differs from the released code."""
    released = {s.name: s.released for s in all_switches()}
    lines = [f"Protocol: **{record['protocol']}** (stages recorded: {', '.join(record.get('stages', [])) or 'none'})."]
    missing = record.get("missing", [])
    if missing:
        lines.append(f"No protocol record was found for: {', '.join(missing)} (their switches are unknown).")
    differs = record.get("differs_from_released", {})
    if not differs:
        lines.append("Every recorded switch has the released code's value.")
        return lines
    lines.append("Switches that differ from the released code (value here / released value):")
    lines += [f"  - `{name}`: {_show(value)} / {_show(released.get(name))}" for name, value in differs.items()]
    return lines


def _show(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def markdown_table() -> list[str]:
    """The README table: released behaviour, nawsv default, the switch (with its released value) and why."""
    lines = ["| released code | nawsv default | switch: released value | why nawsv differs | spec |",
             "|---|---|---|---|---|"]
    for diff in DIFFERENCES:
        names = sorted({s.key for s in diff.switches}, key=[s.key for s in diff.switches].index)
        switch = "–"
        if names:
            stages = {key: "/".join(s.stage for s in diff.switches if s.key == key) for key in names}
            value = _show(diff.switches[0].released)
            switch = ", ".join(f"{stages[key]}: `{key}`" for key in names) + f": `{value}`"
        lines.append(f"| {diff.released} | {diff.nawsv} | {switch} | {diff.why} | §{diff.spec} |")
    return lines

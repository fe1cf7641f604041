"""The protocol table: the recipe's configs select it, the README shows it, stages record it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from nawsv.data.audio import load_audio, write_audio
from nawsv.formats.kaldi import write_table
from nawsv.data.noise_chunks import ChunkedNoiseBank
from nawsv.data.noise_bank import NoiseBank
from nawsv.data.noisy_sets import NoisySetConfig, make_noisy_sets, read_condition, read_manifest
from nawsv.data.prepare import PrepareConfig, prepare_speaker_set
from nawsv.data.sources import open_audio_source
from nawsv.extract.stamp import STAMP_NAME, make_stamp
from nawsv.protocol import (DIFFERENCES, RECORD_NAME, all_switches, make_record, markdown_table, protocol_name,
                            read_protocol_record, summary_lines, switch_values, write_stage_record)
from nawsv.scoring.config import ScoreConfig
from nawsv.scoring.provenance import experiment_record
from nawsv.train.finetune import FinetuneConfig
from nawsv.train.warmup import WarmupConfig
from nawsv.utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE_CONF = ROOT / "egs" / "voxceleb" / "conf"
STAGE_CLASSES = {"noisy": NoisySetConfig, "warmup": WarmupConfig, "finetune": FinetuneConfig, "score": ScoreConfig}
RELEASED = [("noisy", RECIPE_CONF / "released_noisy.yaml"), ("score", RECIPE_CONF / "released_score.yaml")] + [
    (stage, RECIPE_CONF / f"released_{corpus}_wavlm_base_plus_{stage}.yaml")
    for corpus in ("vox1", "vox2") for stage in ("warmup", "finetune")] + [
    ("finetune", RECIPE_CONF / "released_baseline_finetune.yaml")]
NAWSV = [(stage, ROOT / "conf" / f"{stage}.yaml") for stage in STAGE_CLASSES] + [
    (stage, RECIPE_CONF / f"{corpus}_wavlm_base_plus_{stage}.yaml")
    for corpus in ("vox1", "vox2") for stage in ("warmup", "finetune")] + [
    ("finetune", RECIPE_CONF / "baseline_finetune.yaml")]


@pytest.mark.parametrize("stage,path", RELEASED, ids=lambda v: getattr(v, "name", v))
def test_released_configs_select_every_released_value(stage: str, path: Path) -> None:
    values = switch_values(stage, load_config(STAGE_CLASSES[stage], path))
    expected = {s.name: s.released for s in all_switches([stage])}
    assert values == expected and expected
    assert protocol_name(values) == "released"


@pytest.mark.parametrize("stage,path", NAWSV, ids=lambda v: getattr(v, "name", v))
def test_default_configs_are_the_nawsv_protocol(stage: str, path: Path) -> None:
    values = switch_values(stage, load_config(STAGE_CLASSES[stage], path))
    assert values == {s.name: s.nawsv for s in all_switches([stage])}
    assert values == switch_values(stage, STAGE_CLASSES[stage]())           # the dataclass defaults are nawsv's


def test_every_switch_is_a_real_config_key() -> None:
    for switch in all_switches():
        cls = STAGE_CLASSES[switch.stage]
        load_config(cls, overrides=[f"{switch.key}={yaml.safe_dump(switch.released, default_flow_style=True)}"
                                    .removesuffix("\n...\n").strip()])
    assert len({s.name for s in all_switches()}) == len(all_switches())


def test_readme_holds_the_generated_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = "\n".join(markdown_table())
    assert table in readme
    assert len(markdown_table()) == 2 + len(DIFFERENCES)


def test_records_name_the_protocol_and_the_differences(tmp_path: Path) -> None:
    released = load_config(WarmupConfig, RECIPE_CONF / "released_vox1_wavlm_base_plus_warmup.yaml")
    write_stage_record(tmp_path / "warmup", "warmup", released)
    record = read_protocol_record(tmp_path / "warmup" / RECORD_NAME)
    assert record["protocol"] == "released" and record["differs_from_released"] == {}
    one_fix = load_config(WarmupConfig, RECIPE_CONF / "released_vox1_wavlm_base_plus_warmup.yaml",
                          ["teacher_input=clean"])
    record = make_record(switch_values("warmup", one_fix))
    assert record["protocol"] == "custom"
    assert record["differs_from_released"] == {"warmup.teacher_input": "clean"}
    lines = summary_lines({**record, "stages": ["warmup"]})
    assert lines[0] == "Protocol: **custom** (stages recorded: warmup)."
    assert lines[-1] == "  - `warmup.teacher_input`: clean / noisy"
    nawsv = make_record(switch_values("warmup", WarmupConfig()))
    assert nawsv["protocol"] == "nawsv"
    assert nawsv["differs_from_released"] == {s.name: s.nawsv for s in all_switches(["warmup"])
                                              if s.nawsv != s.released}


def test_experiment_record_gathers_the_stages(tmp_path: Path) -> None:
    exp, data = tmp_path / "exp", tmp_path / "data" / "t_noise_0"
    write_stage_record(exp / "warmup", "warmup", WarmupConfig())
    write_stage_record(data, "noisy", load_config(NoisySetConfig, RECIPE_CONF / "released_noisy.yaml"))
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    (exp / "embeddings" / "t_noise_0").mkdir(parents=True)
    (exp / "embeddings" / "t_noise_0" / STAMP_NAME).write_text(
        yaml.safe_dump(make_stamp(model, "0" * 64, data, {})), encoding="utf-8")
    record = experiment_record(exp, ["t_noise_0"], ScoreConfig(eer="roc_interp"))
    assert record["stages"] == ["noisy", "warmup", "score"]
    assert record["missing"] == ["finetune"]                                 # no record: its switches are unknown
    assert record["protocol"] == "custom"                                    # released noisy sets, nawsv warm-up
    assert not any(k.startswith(("noisy.", "score.")) for k in record["differs_from_released"])
    assert record["differs_from_released"]["warmup.teacher_input"] == "clean"


def test_released_stage2_with_chunks_floor_and_clipping(tiny_corpus: dict[str, Path], tmp_path: Path) -> None:
    bank_dir = tmp_path / "musan_test"
    rng = np.random.default_rng(4)
    lengths = {"noise/long-0001": 20 * 16000, "noise/short-0003": 3 * 16000}
    paths = {}
    for key, length in lengths.items():
        paths[key] = str(tmp_path / "noise" / f"{key.split('/')[1]}.wav")
        write_audio(paths[key], (0.01 * rng.standard_normal(length)).astype(np.float32))   # quiet noise
    write_table(bank_dir / "wav.scp", paths)
    write_table(bank_dir / "utt2cat", {k: "noise" for k in lengths})
    test = tmp_path / "data" / "tiny_test"
    prepare_speaker_set(tiny_corpus["voxceleb"] / "test" / "wav", test, PrepareConfig(nj=1, shards=False),
                        [("tiny_O", tiny_corpus["trials"])])
    cfg = load_config(NoisySetConfig, RECIPE_CONF / "released_noisy.yaml",
                      ["categories=[noise]", "snrs=[0]", "chunk_size=5"])
    [materialised] = make_noisy_sets(test, tmp_path / "files", cfg, musan=bank_dir)
    [lazy] = make_noisy_sets(test, tmp_path / "lazy", cfg, musan=bank_dir, materialize=False)
    condition = read_condition(materialised)
    assert (condition["level_floor"], condition["musan_chunks"], condition["clipping"]) == (1e-4, True, "clip")
    assert read_protocol_record(materialised / RECORD_NAME)["protocol"] == "released"
    chunks = ChunkedNoiseBank(NoiseBank.from_dir(bank_dir))
    assert len(chunks.keys("noise")) == 5 + 1
    rows = read_manifest(materialised / "manifest.tsv")
    for row in rows:
        assert row.noise_keys[0] in chunks.keys("noise") and row.peak_scale == 1.0
        speech = load_audio(row.clean_path)
        noise = chunks.read_at(row.noise_keys[0], speech.size, row.offsets[0]).astype(np.float64)
        power = float(np.mean(speech.astype(np.float64) ** 2))
        expected = math.sqrt((power + 1e-4) / (float(np.mean(noise ** 2)) + 1e-4))     # 0 dB, released levels
        assert row.gain == pytest.approx(expected, rel=1e-9)
    files, on_the_fly = open_audio_source(materialised), open_audio_source(lazy)
    for key in files.keys():
        np.testing.assert_array_equal(files.load(key), on_the_fly.load(key))


def test_best_test_epoch_is_a_separate_labelled_line(tmp_path: Path) -> None:
    from nawsv.scoring.report import best_test_epoch_line
    from nawsv.formats.dev_metrics import read_dev_metrics, record_dev_metrics

    finetune = tmp_path / "finetune"
    finetune.mkdir()
    for epoch, eer in ((1, 9.0), (2, 4.5), (3, 6.0)):
        record_dev_metrics(finetune, epoch, "vox1_test/vox1_O", {"dev_eer": eer, "dev_mindcf_0.01": 0.5})
    record_dev_metrics(finetune, 2, "vox1_test/vox1_O", {"dev_eer": 7.0, "dev_mindcf_0.01": 0.5})   # resumed epoch
    assert [(r["epoch"], float(r["dev_eer"])) for r in read_dev_metrics(finetune)] == [("1", 9.0), ("2", 7.0),
                                                                                        ("3", 6.0)]
    [line, _] = best_test_epoch_line(tmp_path, "vox1_O", "vox1_test")
    assert line.startswith("**Best epoch on the test trials (the paper's selection; optimistic):** EER 6.000 % at "
                           "fine-tuning epoch 3 of the 3 evaluated")
    assert best_test_epoch_line(tmp_path, "vox1_E", "vox1_all") == []      # a dev set that is not these trials


def test_skip_category(tmp_path: Path) -> None:
    from nawsv.bin.make_noisy_sets import main
    from nawsv.utils.errors import ConfigError

    base = ["--data", str(tmp_path), "--out_root", str(tmp_path)]
    with pytest.raises(ConfigError, match="--skip_category speech: not among the config's categories"):
        main(base + ["--skip_category", "speech"])
    with pytest.raises(ConfigError, match="leaves no category"):
        main(base + ["--override", "categories=[nonspeech]", "--skip_category", "nonspeech"])

"""tools/slurm templates and the commands egs/voxceleb/run.sh prints in a dry run.

The templates run here under a fake Slurm: the SLURM_* variables an array task or a multi-node job sees, and
stand-ins for srun / scontrol on PATH (srun logs the options it was given). A stage-2 array runs for real on
the tiny corpus: a resubmitted index, the merge that names the missing array indices, the rest of the array. Parts that need stage options the engine has not got yet (--job,
--nnodes, stages 3-6) skip, naming the missing piece.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_noisy_sets import inputs  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "egs" / "voxceleb"
SLURM = ROOT / "tools" / "slurm"
TEMPLATES = sorted(SLURM.glob("*.sbatch"))
CORPUS_OPTIONS = ("--vox1_root", "/corpora/voxceleb1", "--musan_root", "/corpora/musan",
                  "--rirs_root", "/corpora/RIRS_NOISES", "--nonspeech_root", "/corpora/Nonspeech")


def run(command: list[str], env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})})


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """egs/voxceleb/run.sh --dry_run true with data/exp under tmp_path and fake corpus roots."""
    proc = run(["bash", str(RECIPE / "run.sh"), "--dry_run", "true", "--python", sys.executable,
                "--data", str(tmp_path / "data"), *CORPUS_OPTIONS, *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def commands(output: str) -> list[str]:
    return [line[2:] for line in output.splitlines() if line.startswith("+ ")]


@functools.lru_cache(maxsize=None)
def engine_options() -> str:
    return run(["bash", str(RECIPE / "run.sh"), "--help"]).stdout


def needs_engine_option(*names: str):
    missing = [n for n in names if f"--{n} " not in engine_options()]
    return pytest.mark.skipif(bool(missing), reason=f"the stage engine (run.sh) has no option "
                                                    f"{', '.join('--' + n for n in missing)} yet")


def option_value(command: str, option: str) -> str:
    match = re.search(rf"(?:^| ){re.escape(option)} (\S+)", command)
    assert match, f"{option} not in: {command}"
    return match.group(1)


# ---------------------------------------------------------------------------------------------------------------
# Templates: syntax, and the checks they make before touching anything


@pytest.mark.parametrize("script", TEMPLATES + [SLURM / "common.sh"], ids=lambda p: p.name)
def test_templates_parse(script: Path) -> None:
    proc = run(["bash", "-n", str(script)])
    assert proc.returncode == 0, proc.stderr
    if script.suffix == ".sbatch":
        text = script.read_text()
        assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
        assert "# ---- parameters ----" in text and "#SBATCH --job-name=" in text


def test_expected_templates_exist() -> None:
    assert {p.name for p in TEMPLATES} == {"noisy_array.sbatch", "extract_array.sbatch", "merge.sbatch",
                                            "train.sbatch", "convert_array.sbatch"}


def array_env(task: int, first: int, last: int, count: int) -> dict:
    """What an array task sees (with one GPU: extract_array.sbatch refuses an allocation without one)."""
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_MAX": str(last), "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_CPUS_PER_TASK": "3", "SLURM_GPUS_ON_NODE": "1",
            "SLURM_GPUS_PER_NODE": ""}


@pytest.mark.parametrize("name", ["noisy_array.sbatch", "extract_array.sbatch", "convert_array.sbatch"])
def test_array_templates_refuse_non_contiguous_arrays(name: str) -> None:
    env = {"SRC": "/nonexistent", "DST": "/nonexistent2"}
    stepped = run(["bash", str(SLURM / name)], {**array_env(4, 0, 30, 16), **env})      # --array=0-30:2
    assert stepped.returncode != 0 and "contiguous range" in stepped.stderr
    outside = run(["bash", str(SLURM / name)], {"SLURM_SUBMIT_DIR": str(ROOT), **env,
                                                "SLURM_ARRAY_TASK_ID": "", "SLURM_ARRAY_TASK_MIN": ""})
    assert outside.returncode != 0 and "not an array task" in outside.stderr


@pytest.mark.parametrize("name, stage, message", [
    ("merge.sbatch", "", "set STAGE=2 or STAGE=5"),
    ("merge.sbatch", "3", "STAGE must be 2 (noisy test sets) or 5"),
    ("train.sbatch", "5", "STAGE must be 3 (warm-up) or 4"),
])
def test_stage_templates_refuse_wrong_stage(name: str, stage: str, message: str) -> None:
    proc = run(["bash", str(SLURM / name)], {"STAGE": stage, "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NNODES": "2",
                                              "SLURM_JOB_NODELIST": "n[1-2]"})
    assert proc.returncode != 0 and message in proc.stderr


# Whatever a template needs before it looks for the checkout (the stage, the array, the allocation)
PAST_EARLY_CHECKS = {"ARRAY": "0-3", "SRC": "/src", "DST": "/dst", "SLURM_NNODES": "1",
                     "SLURM_JOB_NODELIST": "n1", **array_env(0, 0, 3, 4)}


@pytest.mark.parametrize("script", TEMPLATES, ids=lambda p: p.name)
def test_submitted_outside_the_checkout_says_how_to_submit(script: Path, tmp_path: Path) -> None:
    """Slurm runs a copy of the script, so the checkout is the submit dir: elsewhere, one line says what to do."""
    stage = "3" if script.name == "train.sbatch" else "2"
    proc = run(["bash", str(script)], {**PAST_EARLY_CHECKS, "STAGE": stage, "SLURM_SUBMIT_DIR": str(tmp_path)},
               cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (f"{script.name}: {tmp_path} is not a nawsv checkout; submit from its root (cd "
                                   f"nawsv && sbatch tools/slurm/{script.name} ...) or set NAWSV_ROOT")


def fake_sbatch(tmp_path: Path) -> Path:
    """A stand-in for sbatch that, like Slurm, opens the script's --output (%x %j %A %a expanded, relative to
    the submit dir, no folder created) and runs the script there as array task 0 of --array=0-0."""
    bin_dir = tmp_path / "sbatch_bin"
    bin_dir.mkdir()
    stub = bin_dir / "sbatch"
    stub.write_text(f"""#!{sys.executable}
import os, re, subprocess, sys
script, args = sys.argv[1], sys.argv[2:]          # (no sbatch options in these tests)
text = open(script).read()
option = lambda name: re.search(rf"^#SBATCH --{{name}}=(\\S+)", text, re.M).group(1)
job = "4242"
out = option("output").replace("%x", option("job-name")).replace("%j", job).replace("%A", job).replace("%a", "0")
env = dict(os.environ, SLURM_JOB_ID=job, SLURM_SUBMIT_DIR=os.getcwd(), SLURM_ARRAY_TASK_ID="0",
           SLURM_ARRAY_TASK_MIN="0", SLURM_ARRAY_TASK_MAX="0", SLURM_ARRAY_TASK_COUNT="1")
with open(out, "w") as log:       # Slurm creates no folder: a missing one fails the job
    sys.exit(subprocess.call(["bash", script, *args], stdout=log, stderr=subprocess.STDOUT, env=env))
""")
    stub.chmod(0o755)
    return bin_dir


def test_logs_go_to_logs_under_the_checkout_and_git_ignores_them(tmp_path: Path) -> None:
    for script in TEMPLATES:
        array = script.name.endswith("_array.sbatch")
        assert f"#SBATCH --output=logs/%x-{'%A_%a' if array else '%j'}.out\n" in script.read_text(), script.name
    assert (ROOT / "logs").is_dir()
    log = ROOT / "logs" / "nawsv-noisy-4242_0.out"
    bin_dir = fake_sbatch(tmp_path)
    try:
        proc = run(["sbatch", "tools/slurm/noisy_array.sbatch", "--dry_run", "true", "--data",
                    str(tmp_path / "data"), *CORPUS_OPTIONS], {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
        assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
        assert "nawsv.bin.make_noisy_sets" in log.read_text()
        if (ROOT / ".git").exists():                     # a checkout (not an unpacked archive)
            for path in (log, ROOT / "slurm-4242.out"):
                assert run(["git", "check-ignore", "-q", str(path)]).returncode == 0, path
    finally:
        log.unlink(missing_ok=True)
    assert not list(ROOT.glob("slurm-*.out"))


@pytest.mark.parametrize("env, device", [({}, "cuda"), ({"DEVICE": "cpu", "SLURM_GPUS_ON_NODE": ""}, "cpu")])
def test_extract_array_runs_on_the_gpu_asked_for_or_on_cpu(tmp_path: Path, env: dict, device: str) -> None:
    proc = run(["bash", str(SLURM / "extract_array.sbatch"), "--dry_run", "true", "--data", str(tmp_path / "data"),
                *CORPUS_OPTIONS], {**array_env(0, 0, 1, 2), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [c for c in commands(proc.stdout) if "nawsv.bin.extract" in c]
    assert calls and all(option_value(c, "--device") == device for c in calls)


def test_extract_array_without_a_gpu_says_how_to_ask_for_one(tmp_path: Path) -> None:
    assert "#SBATCH --gpus" not in (SLURM / "extract_array.sbatch").read_text()    # a GPU-less cluster refuses it
    proc = run(["bash", str(SLURM / "extract_array.sbatch")], {**array_env(0, 0, 1, 2), "SLURM_GPUS_ON_NODE": ""})
    assert proc.returncode != 0
    assert "no GPUs in this allocation; request them (sbatch --gpus-per-node=N, or --gpus=1" in proc.stderr
    assert "or set DEVICE=cpu" in proc.stderr
    proc = run(["bash", str(SLURM / "extract_array.sbatch")], {**array_env(0, 0, 1, 2), "DEVICE": "tpu"})
    assert proc.returncode != 0 and "DEVICE must be cuda or cpu, got 'tpu'" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# Dry runs of the recipe: the printed commands name the right configs and data dirs


def test_dry_run_stages_1_2_vox1(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "--stage", "1", "--stop_stage", "2")
    data = tmp_path / "data"
    stage1, *stage2 = commands(proc.stdout)
    assert stage1.startswith(f"bash {RECIPE}/local/prepare_data.sh ")
    assert option_value(stage1, "--config") == f"{RECIPE}/conf/prepare.yaml"
    assert option_value(stage1, "--data") == str(data)
    for option, value in zip(CORPUS_OPTIONS[::2], CORPUS_OPTIONS[1::2]):
        assert option_value(stage1, option) == value
    assert option_value(stage1, "--train_corpus") == "vox1"
    assert len(stage2) == 2 and "-m nawsv.bin.make_noisy_sets" in stage2[0]
    assert "-m nawsv.bin.make_calibration_sets" in stage2[1]                # from the training set, its MUSAN half
    assert option_value(stage2[1], "--train_data") == f"{data}/vox1_dev"
    assert option_value(stage2[1], "--musan") == f"{data}/musan_train"
    assert option_value(stage2[1], "--name") == "vox1_dev_calib"
    assert option_value(stage2[0], "--data") == f"{data}/vox1_test"
    assert option_value(stage2[0], "--musan") == f"{data}/musan_test"
    assert option_value(stage2[0], "--nonspeech") == f"{data}/nonspeech"
    assert option_value(stage2[0], "--config") == f"{ROOT}/conf/noisy.yaml"      # the shared paper protocol
    assert not data.exists()


@pytest.mark.parametrize("args, expected", [
    ((), {"train_set": "vox1_dev", "test_sets": "vox1_test", "exp": f"{RECIPE}/exp/vox1_nawsv"}),
    (("--train_corpus", "vox2"), {"train_set": "vox2_dev", "test_sets": "vox1_test vox1_all",
                                  "exp": f"{RECIPE}/exp/vox2_nawsv"}),
    (("--train_corpus=vox2", "--skip_warmup=true"), {"train_set": "vox2_dev", "exp": f"{RECIPE}/exp/vox2_baseline"}),
    (("--skip-warmup", "true"), {"train_set": "vox1_dev", "exp": f"{RECIPE}/exp/vox1_baseline"}),
    (("--train_corpus", "vox2", "--train_set", "my_set"), {"train_set": "my_set"}),
])
def test_train_corpus_and_baseline_choose_sets(args: tuple, expected: dict) -> None:
    proc = run(["bash", str(RECIPE / "run.sh"), *args, "--help"])
    assert proc.returncode == 0, proc.stderr
    shown = {m.group(1): m.group(2).strip() for m in re.finditer(r"^  --(\w+) +(.*)$", proc.stdout, re.M)}
    for name, value in expected.items():
        assert shown[name] == value, name


@pytest.mark.parametrize("args, message", [
    (("--train_corpus", "vox3"), "--train_corpus must be vox1 or vox2, got 'vox3'"),
    (("--skip_warmup", "yes"), "--skip_warmup takes true or false, got 'yes'"),
])
def test_bad_recipe_choices(args: tuple, message: str) -> None:
    proc = run(["bash", str(RECIPE / "run.sh"), *args, "--dry_run", "true"])
    assert proc.returncode != 0 and message in proc.stderr


def test_stage1_glue_requires_corpus_roots(tmp_path: Path) -> None:
    proc = run(["bash", str(RECIPE / "local" / "prepare_data.sh"), "--data", str(tmp_path), "--config",
                str(RECIPE / "conf" / "prepare.yaml"), "--vox1_root", "/x"])
    assert proc.returncode != 0 and "--musan_root is required" in proc.stderr
    proc = run(["bash", str(RECIPE / "local" / "prepare_data.sh"), "--data", str(tmp_path), "--config",
                str(RECIPE / "conf" / "prepare.yaml"), *CORPUS_OPTIONS])
    assert proc.returncode != 0 and "/corpora/voxceleb1/veri_test2.txt (Vox1-O cleaned) not found" in proc.stderr
    assert not any(tmp_path.iterdir())


@needs_engine_option("noisy_test_sets")
def test_dry_run_vox2_noisy_copies_of_vox1_o_only(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "--stage", "2", "--stop_stage", "2", "--train_corpus", "vox2")
    noisy = [c for c in commands(proc.stdout) if "nawsv.bin.make_noisy_sets" in c]
    assert [option_value(c, "--data") for c in noisy] == [f"{tmp_path}/data/vox1_test"]


def stage_commands(tmp_path: Path, *args: str) -> dict[int, list[str]]:
    """Commands printed per stage of a dry run of stages 3-6; skips while the engine has no stages 3-4."""
    proc = dry_run(tmp_path, "--stage", "3", "--stop_stage", "6", "--pretrained", "/models/wavlm-base-plus", *args)
    stages: dict[int, list[str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        header = re.search(r"\bstage (\d+):", line)
        if header:
            current = int(header.group(1))
            stages.setdefault(current, [])
        elif line.startswith("+ ") and current is not None:
            stages[current].append(line[2:])
    if 3 not in stages or 4 not in stages:
        pytest.skip("the stage engine (run.sh) has no stages 3-4 yet")
    return stages


@pytest.mark.parametrize("corpus", ["vox1", "vox2"])
def test_dry_run_training_stages(tmp_path: Path, corpus: str) -> None:
    stages = stage_commands(tmp_path, "--train_corpus", corpus)
    data, exp = tmp_path / "data", RECIPE / "exp" / f"{corpus}_nawsv"
    (warmup,), (finetune,) = stages[3], stages[4]
    assert "nawsv.bin.train warmup" in warmup and "nawsv.bin.train finetune" in finetune
    assert option_value(warmup, "--config") == f"{RECIPE}/conf/{corpus}_wavlm_base_plus_warmup.yaml"
    assert option_value(finetune, "--config") == f"{RECIPE}/conf/{corpus}_wavlm_base_plus_finetune.yaml"
    for command in (warmup, finetune):
        assert option_value(command, "--train_data") == f"{data}/{corpus}_dev"
        assert option_value(command, "--musan") == f"{data}/musan_train"
        assert option_value(command, "--pretrained") == "/models/wavlm-base-plus"
    assert option_value(warmup, "--exp_dir") == f"{exp}/warmup"
    assert option_value(finetune, "--rirs") == f"{data}/rirs"
    assert option_value(finetune, "--init") == f"{exp}/warmup/student.pt"


@pytest.mark.parametrize("corpus", ["vox1", "vox2"])
def test_dry_run_extract_and_score(tmp_path: Path, corpus: str) -> None:
    stages = stage_commands(tmp_path, "--train_corpus", corpus)
    if not stages.get(5) or not stages.get(6):
        pytest.skip("the stage engine (run.sh) has no stages 5-6 yet")
    data = tmp_path / "data"
    extracted = " ".join(stages[5])
    scored = " ".join(stages[6])
    for test_set in ["vox1_test"] + (["vox1_all"] if corpus == "vox2" else []):
        assert test_set in extracted and test_set in scored
    assert f"{corpus}_dev" in extracted                               # the AS-norm cohort: the training set
    assert "vox1_all_" not in extracted + scored                       # no noisy copies of Vox1-E/H
    assert str(data) in extracted


def test_dry_run_baseline_skips_warmup(tmp_path: Path) -> None:
    stages = stage_commands(tmp_path, "--skip_warmup", "true")
    assert not stages.get(3)
    (finetune,) = stages[4]
    assert option_value(finetune, "--config") == f"{RECIPE}/conf/baseline_finetune.yaml"
    assert option_value(finetune, "--init") == "none"
    assert option_value(finetune, "--pretrained") == "/models/wavlm-base-plus"
    assert option_value(finetune, "--exp_dir").startswith(f"{RECIPE}/exp/vox1_baseline")


# ---------------------------------------------------------------------------------------------------------------
# Templates under a fake Slurm, with the engine in dry-run mode


@needs_engine_option("job", "num_jobs")
@pytest.mark.parametrize("name, stage_module", [("noisy_array.sbatch", "make_noisy_sets"),
                                                ("extract_array.sbatch", "extract")])
def test_array_template_passes_its_share(tmp_path: Path, name: str, stage_module: str) -> None:
    proc = run(["bash", str(SLURM / name), "--dry_run", "true", "--data", str(tmp_path / "data"), *CORPUS_OPTIONS],
               array_env(5, 2, 9, 8))                                              # --array=2-9, task 5
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [c for c in commands(proc.stdout) if f"nawsv.bin.{stage_module}" in c]
    assert calls and all((option_value(c, "--job"), option_value(c, "--num_jobs"), option_value(c, "--array_first"))
                         == ("3", "8", "2") for c in calls)


@needs_engine_option("merge")
def test_merge_template(tmp_path: Path) -> None:
    proc = run(["bash", str(SLURM / "merge.sbatch"), "--dry_run", "true", "--data", str(tmp_path / "data"),
                *CORPUS_OPTIONS], {"STAGE": "2", "ARRAY": "1-4", "SLURM_SUBMIT_DIR": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [c for c in commands(proc.stdout) if "nawsv.bin.make_noisy_sets" in c]
    assert calls and all(option_value(c, "--merge") == "true" for c in calls)
    assert all((option_value(c, "--num_jobs"), option_value(c, "--array_first")) == ("4", "1") for c in calls)
    for array, message in (("", "set ARRAY to the --array range of the array this merges"),
                           ("0-", "ARRAY must be the --array range of the array, such as 0-31, got '0-'"),
                           ("5-2", "got '5-2'")):
        proc = run(["bash", str(SLURM / "merge.sbatch")], {"STAGE": "5", "ARRAY": array, "SLURM_SUBMIT_DIR": str(ROOT)})
        assert proc.returncode != 0 and message in proc.stderr


@needs_engine_option("job", "num_jobs", "array_first")
@pytest.mark.parametrize("name, stage_module", [("noisy_array.sbatch", "make_noisy_sets"),
                                                ("extract_array.sbatch", "extract")])
def test_resubmitted_index_keeps_its_share(tmp_path: Path, name: str, stage_module: str) -> None:
    """--array=7 of an array first submitted as --array=1-8 is job 6 of 8, not job 0 of 1."""
    args = ["bash", str(SLURM / name), "--dry_run", "true", "--data", str(tmp_path / "data"), *CORPUS_OPTIONS]
    resubmitted = array_env(7, 7, 7, 1)
    plain = run(args, resubmitted)                                  # without ARRAY: the trap the README warns of
    assert plain.returncode == 0, plain.stderr
    assert {(option_value(c, "--job"), option_value(c, "--num_jobs")) for c in commands(plain.stdout)
            if stage_module in c} == {("0", "1")}
    proc = run(args, {**resubmitted, "ARRAY": "1-8"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [c for c in commands(proc.stdout) if f"nawsv.bin.{stage_module}" in c]
    assert calls and all((option_value(c, "--job"), option_value(c, "--num_jobs"), option_value(c, "--array_first"))
                         == ("6", "8", "1") for c in calls)
    outside = run(args, {**array_env(9, 9, 9, 1), "ARRAY": "1-8"})
    assert outside.returncode != 0 and "array index 9 is outside ARRAY=1-8" in outside.stderr


def stage2_recipe(tmp_path: Path, inputs: dict[str, Path], name: str) -> tuple[Path, Path]:
    """A recipe whose stage 2 makes noise and music at 0 dB of the 9-utterance tiny test set in chunks of 4:
    2 conditions x 3 chunks = units 0-2 (noise) and 3-5 (music). Returns (recipe dir, data dir)."""
    recipe, data = tmp_path / name / "recipe", tmp_path / name / "data"
    (recipe / "conf").mkdir(parents=True)
    # no training set here: the calibration sets (stage 2, job 0, from the training set) are left out
    (recipe / "defaults.sh").write_text("train_set=tiny_dev\ntest_sets=tiny_test\ncalibration=false\nrecipe_options=\n")
    (recipe / "run.sh").write_text(f'exec bash {ROOT}/run.sh --recipe "$(dirname "$0")" "$@"\n')
    (recipe / "conf" / "noisy.yaml").write_text("seed: 5\ncategories: [noise, music]\nsnrs: [0]\nchunk_size: 4\n")
    shutil.copytree(inputs["test"], data / "tiny_test")
    for bank in ("musan_test", "nonspeech"):
        (data / bank).symlink_to(inputs[bank])
    return recipe, data


def noisy_tree(data: Path) -> dict[str, bytes]:
    """The condition dirs' files, with the data dir's absolute path (in wav.scp, condition.yaml) replaced."""
    return {str(p.relative_to(data)): p.read_bytes().replace(str(data).encode(), b"<data>")
            for p in sorted(data.glob("tiny_test_*/**/*")) if p.is_file()}


def test_stage2_array_resubmit_and_merge(tmp_path: Path, inputs: dict[str, Path]) -> None:
    """--array=1-4 over 6 units: index 3 (job 2) is resubmitted with ARRAY=1-4 while 1, 2, 4 have not run yet: it
    makes its one unit only (noise chunk 2); the merge then names both conditions and array indices 1, 2, 4 at once;
    after the rest of the array, the result equals a one-task array, byte for byte."""
    recipe, data = stage2_recipe(tmp_path, inputs, "split")
    template = ["bash", str(SLURM / "noisy_array.sbatch"), "--data", str(data), "--python", sys.executable]
    env = {"SLURM_SUBMIT_DIR": str(ROOT), "RECIPE": str(recipe), "SLURM_CPUS_PER_TASK": "1"}

    def parts() -> list[tuple[str, str]]:
        return sorted((p.parent.parent.name, p.name[:6]) for p in data.glob("tiny_test_*/parts/*.tsv"))

    proc = run(template, {**env, **array_env(3, 3, 3, 1), "ARRAY": "1-4"})              # sbatch --array=3
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parts() == [("tiny_test_noise_0", "000002")] and not list(data.glob("*/manifest.tsv"))
    merge = ["bash", str(SLURM / "merge.sbatch"), "--data", str(data), "--python", sys.executable]
    proc = run(merge, {**env, "STAGE": "2", "ARRAY": "1-4"})
    assert proc.returncode != 0
    assert (f"ERROR: merge: 5 chunk(s) are not done yet ({data}/tiny_test_noise_0: chunks 0-1; "
            f"{data}/tiny_test_music_0: chunks 0-2); they belong to jobs 0, 1, 3 of 4 (array indices 1, 2, 4): "
            f"run them, then merge again (sbatch --array=1-2,4 --export=ALL,ARRAY=1-4 <template> ...)") in proc.stderr
    for task in (1, 4, 2):                                                            # the rest of the array
        proc = run(template, {**env, **array_env(task, 1, 4, 4)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert parts() == [] and len(list(data.glob("*/manifest.tsv"))) == 2               # the last task merged
    proc = run(merge, {**env, "STAGE": "2", "ARRAY": "1-4"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one_recipe, one_data = stage2_recipe(tmp_path, inputs, "one")
    proc = run(["bash", str(SLURM / "noisy_array.sbatch"), "--data", str(one_data), "--python", sys.executable],
               {**env, "RECIPE": str(one_recipe), **array_env(0, 0, 0, 1)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert noisy_tree(data) == noisy_tree(one_data) != {}


def fake_slurm_bin(tmp_path: Path) -> Path:
    """srun logs its options to $SRUN_LOG and runs its command once (one node shown); scontrol expands the
    node list of the test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "${1:-}" == --* ]]; do\n'
                                  '  [ -z "${SRUN_LOG:-}" ] || echo "$1" >> "$SRUN_LOG"; shift\ndone\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] || exit 2\n'
                                      'printf "gpu-a07\\ngpu-a08\\n"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


def run_train_template(tmp_path: Path, env: dict, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """train.sbatch under a fake 2-node allocation; returns the process and the options srun was given."""
    log = tmp_path / "srun.log"
    log.unlink(missing_ok=True)
    bin_dir = tmp_path / "bin" if (tmp_path / "bin").is_dir() else fake_slurm_bin(tmp_path)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "gpu-a[07-08]", "STAGE": "3", "SRUN_LOG": str(log), "SLURM_GPUS_PER_NODE": "",
           "SLURM_GPUS_ON_NODE": "", "SLURM_CPUS_PER_TASK": "", "GPUS_PER_NODE": "", **env}
    proc = run(["bash", str(SLURM / "train.sbatch"), "--dry_run", "true", "--data", str(tmp_path / "data"),
                "--pretrained", "/models/wavlm-base-plus", *CORPUS_OPTIONS, *args], env)
    return proc, log.read_text().split() if log.exists() else []


@needs_engine_option("nnodes", "nproc", "rdzv_endpoint")
def test_train_template_multi_node_rendezvous(tmp_path: Path) -> None:
    proc, _ = run_train_template(tmp_path, {"SLURM_GPUS_PER_NODE": "4"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (torchrun,) = [c for c in commands(proc.stdout) if "nawsv.bin.train" in c]
    assert "torchrun " in torchrun or "-m torch.distributed.run " in torchrun
    assert option_value(torchrun, "--nnodes") == "2" and option_value(torchrun, "--nproc_per_node") == "4"
    assert option_value(torchrun, "--rdzv_backend") == "c10d"
    assert option_value(torchrun, "--rdzv_endpoint") == "gpu-a07:29500"
    assert "nawsv.bin.train warmup" in torchrun
    assert option_value(torchrun, "--config") == f"{RECIPE}/conf/vox1_wavlm_base_plus_warmup.yaml"


@needs_engine_option("nnodes", "nproc", "rdzv_endpoint")
@pytest.mark.parametrize("allocation, gpus", [
    ({"SLURM_GPUS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "64"}, "8"),          # sbatch --gpus-per-node=8
    ({"SLURM_GPUS_PER_NODE": "h100:2", "SLURM_CPUS_PER_TASK": "16"}, "2"),     # --gpus-per-node=h100:2
    ({"SLURM_GPUS_ON_NODE": "3", "SLURM_CPUS_PER_TASK": "12"}, "3"),           # --gres=gpu:3
    ({"SLURM_GPUS_ON_NODE": "3", "SLURM_CPUS_PER_TASK": "12", "NPROC_PER_NODE": "1"}, "1"),   # one GPU used
])
def test_train_template_follows_the_allocation(tmp_path: Path, allocation: dict, gpus: str) -> None:
    """srun gets the job's --cpus-per-task (a step does not inherit it since Slurm 22.05), torchrun one process
    per allocated GPU of a node, and the run --device cuda once."""
    proc, srun_options = run_train_template(tmp_path, allocation)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"--cpus-per-task={allocation['SLURM_CPUS_PER_TASK']}" in srun_options
    (torchrun,) = [c for c in commands(proc.stdout) if "nawsv.bin.train" in c]
    assert option_value(torchrun, "--nproc_per_node") == gpus
    assert torchrun.count(" --device ") == 1 and option_value(torchrun, "--device") == "cuda"


@needs_engine_option("nnodes", "nproc", "rdzv_endpoint")
def test_train_template_cpu_allocation(tmp_path: Path) -> None:
    proc, srun_options = run_train_template(tmp_path, {"DEVICE": "cpu", "NPROC_PER_NODE": "3"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not any(o.startswith("--cpus-per-task") for o in srun_options)       # none asked for: none passed
    (torchrun,) = [c for c in commands(proc.stdout) if "nawsv.bin.train" in c]
    assert option_value(torchrun, "--nproc_per_node") == "3"
    assert torchrun.count(" --device ") == 1 and option_value(torchrun, "--device") == "cpu"
    proc, _ = run_train_template(tmp_path, {"DEVICE": "cpu"})
    assert option_value(next(c for c in commands(proc.stdout) if "nawsv.bin.train" in c), "--nproc_per_node") == "1"


@pytest.mark.parametrize("env, args, message", [
    ({}, (), "no GPUs in this allocation; request them (sbatch --gpus-per-node=N"),
    ({"SLURM_GPUS_PER_NODE": "a100:2,v100:2"}, (), "cannot read a GPU count from 'a100:2,v100:2'; set NPROC_PER_NODE"),
    ({"GPUS_PER_NODE": "4"}, (), "GPUS_PER_NODE is now NPROC_PER_NODE"),
    ({"DEVICE": "tpu"}, (), "DEVICE must be cuda or cpu, got 'tpu'"),
    ({"DEVICE": "cpu", "NPROC_PER_NODE": "0"}, (), "NPROC_PER_NODE must be a positive integer, got '0'"),
    ({"SLURM_GPUS_PER_NODE": "4"}, ("--device", "cpu"), "--device is set by the template from the allocation"),
    ({"SLURM_GPUS_PER_NODE": "4"}, ("--nproc=2",), "--nproc is set by the template"),
    ({"SLURM_GPUS_PER_NODE": "4"}, ("--rdzv-endpoint", "h:1"), "--rdzv-endpoint is set by the template"),
])
def test_train_template_refuses(tmp_path: Path, env: dict, args: tuple, message: str) -> None:
    proc, srun_options = run_train_template(tmp_path, env, *args)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert srun_options == []                                   # refused before starting anything


def test_convert_template_array_covers_every_file(tmp_path: Path) -> None:
    from nawsv.data.m4a import decoder_problem

    problem = decoder_problem()
    if problem:
        pytest.skip(f"m4a conversion skipped: {problem}")
    import numpy as np

    from nawsv.data.m4a import write_m4a

    src, dst = tmp_path / "dev" / "aac", tmp_path / "flac"
    keys = [f"id000{s}/vid{s}/0000{u}" for s in (12, 15) for u in (1, 2)]
    for index, key in enumerate(keys):
        write_m4a(src / f"{key}.m4a", np.sin(np.arange(8000) * (0.01 + 0.005 * index)).astype(np.float32) * 0.3)
    env = {"SRC": str(src), "DST": str(dst), "PYTHON": sys.executable,
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    for task in (0, 1, 2):                                          # --array=0-2
        proc = run(["bash", str(SLURM / "convert_array.sbatch")], {**env, **array_env(task, 0, 2, 3)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.relative_to(dst).with_suffix("").as_posix() for p in dst.rglob("*.flac")) == sorted(keys)

"""tools/slurm templates and the commands egs/voxceleb/run.sh prints in a dry run.

The templates run here under a fake Slurm: the SLURM_* variables an array task or a multi-node job sees, and
stand-ins for srun / scontrol on PATH. Parts that need stage options the engine has not got yet (--job,
--nnodes, stages 3-6) skip, naming the missing piece.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(first),
            "SLURM_ARRAY_TASK_MAX": str(last), "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_CPUS_PER_TASK": "3"}


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
    assert len(stage2) == 1 and "-m nawsv.bin.make_noisy_sets" in stage2[0]
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
    assert calls and all((option_value(c, "--job"), option_value(c, "--num_jobs")) == ("3", "8") for c in calls)


@needs_engine_option("merge")
def test_merge_template(tmp_path: Path) -> None:
    proc = run(["bash", str(SLURM / "merge.sbatch"), "--dry_run", "true", "--data", str(tmp_path / "data"),
                *CORPUS_OPTIONS], {"STAGE": "2", "SLURM_SUBMIT_DIR": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [c for c in commands(proc.stdout) if "nawsv.bin.make_noisy_sets" in c]
    assert calls and all(option_value(c, "--merge") == "true" for c in calls)


def fake_slurm_bin(tmp_path: Path) -> Path:
    """srun runs its command once (one node shown), scontrol expands the node list of the test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "${1:-}" == --* ]]; do shift; done\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] || exit 2\n'
                                      'printf "gpu-a07\\ngpu-a08\\n"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    return bin_dir


@needs_engine_option("nnodes", "nproc", "rdzv_endpoint")
def test_train_template_multi_node_rendezvous(tmp_path: Path) -> None:
    env = {"PATH": f"{fake_slurm_bin(tmp_path)}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-a[07-08]", "STAGE": "3", "GPUS_PER_NODE": "4"}
    proc = run(["bash", str(SLURM / "train.sbatch"), "--dry_run", "true", "--data", str(tmp_path / "data"),
                "--pretrained", "/models/wavlm-base-plus", *CORPUS_OPTIONS], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (torchrun,) = [c for c in commands(proc.stdout) if "nawsv.bin.train" in c]
    assert "torchrun " in torchrun or "-m torch.distributed.run " in torchrun
    assert option_value(torchrun, "--nnodes") == "2" and option_value(torchrun, "--nproc_per_node") == "4"
    assert option_value(torchrun, "--rdzv_backend") == "c10d"
    assert option_value(torchrun, "--rdzv_endpoint") == "gpu-a07:29500"
    assert "nawsv.bin.train warmup" in torchrun
    assert option_value(torchrun, "--config") == f"{RECIPE}/conf/vox1_wavlm_base_plus_warmup.yaml"


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

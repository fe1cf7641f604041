#!/usr/bin/env bash
# nawsv stage engine (Kaldi/ESPnet/WeSpeaker style). With no arguments it runs the embedded mini recipe
# (egs/mini: synthetic corpus, tiny random-init WavLM, CPU minutes) end to end; egs/<name>/run.sh call
# it with --recipe. Every stage is also `python -m nawsv.bin.<stage>`, rerunnable on its own:
#   bash run.sh --stage 3 --stop_stage 6
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# The recipe is needed before option parsing: its defaults.sh adds recipe options (corpus roots, ...).
recipe=$root/egs/mini
argv=("$@")
for ((i = 0; i < ${#argv[@]}; i++)); do
  case "${argv[i]}" in
    --recipe) recipe=${argv[i + 1]:-} ;;
    --recipe=*) recipe=${argv[i]#*=} ;;
  esac
done
[ -d "$recipe" ] || { echo "run.sh: recipe directory '$recipe' does not exist" >&2; exit 1; }
recipe=$(cd "$recipe" && pwd)

# ---- defaults (every one is an option: --name value) ----
stage=1                 # first stage to run
stop_stage=100          # last stage to run
data=$recipe/data       # Kaldi data dirs
exp=$recipe/exp/nawsv   # experiment dir (config copies, logs, checkpoints, embeddings, scores)
conf=$recipe/conf       # stage configs; a file missing here is taken from $root/conf
nj=2                    # parallel jobs for data preparation, noisy sets and extraction
train_set=              # training data dir name under $data (set by the recipe)
test_sets=              # clean test set names under $data (set by the recipe)
materialize_noisy=true  # stage 2: write noisy audio (true) or only manifests, mixed on the fly (false)
noisy_test_sets=        # stage 2: test sets that get noisy copies (empty: all of test_sets)
noisy_dir=              # stage 2: subfolder of $data for the noisy sets (empty: $data itself)
job=0                   # stages 2 and 5: this job's index, 0 .. num_jobs-1 (a Slurm array task)
num_jobs=1              # stages 2 and 5: jobs sharing the work
merge=false             # stages 2 and 5: only merge what finished jobs wrote
array_first=0           # stages 2 and 5: the Slurm array index of job 0 (messages name array indices)
pretrained=             # local HF dir of the SSL model (e.g. wavlm-base-plus); empty: the config's ssl.pretrained
skip_warmup=false       # baseline: no stage 3, stage 4 fine-tunes the pre-trained model directly
warmup_config=warmup.yaml      # stage-3 config: a file name looked up in $conf, then $root/conf; or a path
finetune_config=finetune.yaml  # stage-4 config (same lookup)
noisy_config=noisy.yaml        # stage-2 config (same lookup)
score_config=score.yaml        # stage-6 config (same lookup)
phase2_trainer=nawsv    # stage 4: nawsv's trainer, or wespeaker (WeSpeaker's own, configs in $conf/wespeaker/)
calibration=true        # stages 2, 5, 6: training-set calibration sets, their embeddings and SNR/duration tables,
                        #   calibrators (score only, QMF, noise-aware QMF), Cllr and actual DCF in the results
dev_set=                # optional held-out dev set (with trials/) scored after every training epoch, for monitoring
device=auto             # auto | cpu | cuda
nproc=1                 # training processes per node (GPUs); > 1 launches torchrun
nnodes=1                # nodes for multi-node training (torchrun c10d rendezvous)
rdzv_endpoint=          # host:port of the rendezvous when nnodes > 1
python=                 # interpreter; default: $root/.venv/bin/python (created by tools/install.sh)
dry_run=false           # print the commands instead of running them
ablation=false          # true: also run the baseline without warm-up (stages 3-7, same data, configs and seeds)
                        #   in $baseline_exp, then compare both in one table (nawsv compare) in $compare_dir
baseline_exp=           # the baseline's experiment dir (default: <dir of $exp>/baseline)
compare_dir=            # where the comparison goes (default: <dir of $exp>/compare)
recipe_options=         # recipe option names forwarded to local/prepare_data.sh (set in defaults.sh)
recipe_switches=        # recipe option names read by its defaults.sh only (listed by --help)
. "$recipe/defaults.sh"

help_message="Usage: bash run.sh [--recipe egs/<name>] [--stage N] [--stop_stage M] [--option value ...]
Stages: 1 data preparation, 2 noisy test sets, 3 NAW-SV warm-up, 4 fine-tuning, 5 embeddings, 6 scoring,
  7 report, 8 export. --ablation true adds the baseline (stages 3-7) and a comparison table."
parse_options_names="recipe stage stop_stage data exp conf nj train_set test_sets materialize_noisy noisy_test_sets
  noisy_dir job num_jobs merge array_first pretrained skip_warmup warmup_config finetune_config noisy_config
  score_config calibration dev_set device nproc nnodes rdzv_endpoint python dry_run ablation baseline_exp compare_dir phase2_trainer
  $recipe_options $recipe_switches"
. "$root/tools/parse_options.sh"
[ $# -eq 0 ] || { echo "run.sh: unexpected argument '$1' (options are --name value)" >&2; exit 1; }
if [ "$ablation" = true ] && [ "$skip_warmup" = true ]; then
  echo "run.sh: --ablation true runs the baseline beside NAW-SV; drop --skip_warmup true" >&2; exit 1
fi
baseline_exp=${baseline_exp:-$(dirname "$exp")/baseline}
compare_dir=${compare_dir:-$(dirname "$exp")/compare}
noisy_root=$data${noisy_dir:+/$noisy_dir}
calib_set=${train_set}_calib

if [ -z "$python" ]; then
  python=$root/.venv/bin/python
  if [ ! -x "$python" ] && [ "$dry_run" = false ]; then
    echo "run.sh: no environment yet; creating it with tools/install.sh"
    bash "$root/tools/install.sh"
  fi
fi
export PATH="$(dirname "$python"):$PATH"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export NAWSV_PYTHON=$python

# The stage config: a path as given; a bare name from the recipe's conf/ when it has one, else the shared conf/.
config() {
  case "$1" in
    */*) echo "$1" ;;
    *) if [ -f "$conf/$1" ]; then echo "$conf/$1"; else echo "$root/conf/$1"; fi ;;
  esac
}

run() {
  if [ "$dry_run" = true ]; then echo "+ $*"; else "$@"; fi
}

# Training runs as one process, or under torchrun (single node standalone, multi-node c10d rendezvous).
train() {
  if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then
    local rdzv=(--standalone)
    if [ "$nnodes" -gt 1 ]; then
      [ -n "$rdzv_endpoint" ] || { echo "run.sh: --nnodes $nnodes needs --rdzv_endpoint host:port" >&2; exit 1; }
      rdzv=(--rdzv_backend c10d --rdzv_endpoint "$rdzv_endpoint")
    fi
    run python -m torch.distributed.run --nnodes "$nnodes" --nproc_per_node "$nproc" "${rdzv[@]}" \
      -m nawsv.bin.train "$@"
  else
    run python -m nawsv.bin.train "$@"
  fi
}
train_args=()
[ -z "$pretrained" ] || train_args=(--pretrained "$pretrained")
[ -z "$dev_set" ] || train_args+=(--dev_data "$data/$dev_set")

recipe_args=()
for name in $recipe_options; do recipe_args+=("--$name" "${!name}"); done

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  echo "$(date +%T) stage 1: data preparation -> $data"
  run bash "$recipe/local/prepare_data.sh" --data "$data" --nj "$nj" --config "$(config prepare.yaml)" \
    "${recipe_args[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  echo "$(date +%T) stage 2: noisy test sets -> $noisy_root/<set>_<category>_<snr>"
  nonspeech=(--nonspeech "$data/nonspeech")
  if [ ! -f "$data/nonspeech/wav.scp" ] && [ "$dry_run" = false ]; then
    echo "$(date +%T) stage 2: no nonspeech bank ($data/nonspeech): building the MUSAN conditions only"
    nonspeech=(--skip_category nonspeech)
  fi
  for set in ${noisy_test_sets:-$test_sets}; do
    run python -m nawsv.bin.make_noisy_sets --config "$(config "$noisy_config")" --data "$data/$set" \
      --out_root "$noisy_root" --musan "$data/musan_test" "${nonspeech[@]}" \
      --materialize "$materialize_noisy" --nj "$nj" --job "$job" --num_jobs "$num_jobs" --merge "$merge" \
      --array_first "$array_first"
  done
  if [ "$calibration" = true ] && [ "$job" -eq 0 ] && [ "$merge" = false ]; then
    echo "$(date +%T) stage 2: calibration sets from $train_set -> $data/$calib_set[_<category>_<snr>]"
    run python -m nawsv.bin.make_calibration_sets --config "$(config "$score_config")" --train_data "$data/$train_set" \
      --musan "$data/musan_train" --out_root "$data" --name "$calib_set" --materialize "$materialize_noisy" --nj "$nj"
  fi
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  if [ "$skip_warmup" = true ]; then
    echo "$(date +%T) stage 3: NAW-SV warm-up skipped (--skip_warmup true: baseline)"
  else
    echo "$(date +%T) stage 3: NAW-SV warm-up -> $exp/warmup"
    train warmup --config "$(config "$warmup_config")" --train_data "$data/$train_set" \
      --musan "$data/musan_train" --exp_dir "$exp/warmup" --device "$device" "${train_args[@]}"
  fi
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  echo "$(date +%T) stage 4: fine-tuning -> $exp/finetune"
  init=$exp/warmup/student.pt
  [ "$skip_warmup" = false ] || init=none
  case "$phase2_trainer" in
    nawsv)
      train finetune --config "$(config "$finetune_config")" --train_data "$data/$train_set" \
        --musan "$data/musan_train" --rirs "$data/rirs" --init "$init" --exp_dir "$exp/finetune" --device "$device" \
        "${train_args[@]}" ;;
    wespeaker)  # the three runs of WeSpeaker's WavLM recipe, then avg_model.pt for stages 5-8
      [ "$init" != none ] || init=$pretrained
      run bash "$root/tools/wespeaker_phase2.sh" --conf_dir "$conf/wespeaker" --train_data "$data/$train_set" \
        --init "$init" --exp_dir "$exp/finetune" --device "$device" \
        --nproc "$nproc" --nnodes "$nnodes" ${rdzv_endpoint:+--rdzv_endpoint "$rdzv_endpoint"} ;;
    *) echo "run.sh: --phase2_trainer must be nawsv or wespeaker, got '$phase2_trainer'" >&2; exit 1 ;;
  esac
fi

if [ "$stage" -le 5 ] && [ "$stop_stage" -ge 5 ]; then
  echo "$(date +%T) stage 5: embeddings -> $exp/embeddings/<set>"
  extract_args=(--config "$(config extract.yaml)" --model "$exp/finetune/avg_model.pt" --data_root "$data"
    --emb_root "$exp/embeddings" --device "$device" --override "num_workers=$nj" --job "$job"
    --num_jobs "$num_jobs" --merge "$merge" --array_first "$array_first")
  # the AS-norm cohort (training set) needs whole-utterance embeddings only
  run python -m nawsv.bin.extract "${extract_args[@]}" --sets "$train_set" --override segments.enabled=false
  sets=($test_sets)
  noisy_sets=()
  for set in ${noisy_test_sets:-$test_sets}; do noisy_sets+=("${set}_*_*"); done   # stage-2 <set>_<cat>_<snr>
  [ "$calibration" = false ] || sets+=("$calib_set" "${calib_set}_*_*")
  if [ "$noisy_root" = "$data" ]; then
    run python -m nawsv.bin.extract "${extract_args[@]}" --sets "${sets[@]}" "${noisy_sets[@]}"
  else
    run python -m nawsv.bin.extract "${extract_args[@]}" --sets "${sets[@]}"
    run python -m nawsv.bin.extract "${extract_args[@]}" --data_root "$noisy_root" --sets "${noisy_sets[@]}"
  fi
  if [ "$calibration" = true ] && { [ "$num_jobs" -eq 1 ] || [ "$merge" = true ]; }; then
    echo "$(date +%T) stage 5: SNR estimates and durations -> $exp/quality/<set>"
    run python -m nawsv.bin.measure_quality --data_root "$data" --sets "${sets[@]}" --out_root "$exp/quality" \
      --nj "$nj"
    run python -m nawsv.bin.measure_quality --data_root "$noisy_root" --sets "${noisy_sets[@]}" \
      --out_root "$exp/quality" --nj "$nj"
  fi
fi

if [ "$stage" -le 6 ] && [ "$stop_stage" -ge 6 ]; then
  echo "$(date +%T) stage 6: scoring -> $exp/results.md"
  score_sets=()
  for set in $test_sets; do score_sets+=(--test_set "$set"); done
  if [ "$calibration" = true ]; then
    echo "$(date +%T) stage 6: calibrators on $calib_set trials -> $exp/calibration"
    run python -m nawsv.bin.calibrate --config "$(config "$score_config")" --exp_dir "$exp" --data_dir "$data" \
      --calib_set "$calib_set" "${score_sets[@]}" --cohort_set "$train_set"
  fi
  run python -m nawsv.bin.score --config "$(config "$score_config")" --exp_dir "$exp" --data_dir "$data" \
    "${score_sets[@]}" --cohort_set "$train_set"
fi

if [ "$stage" -le 7 ] && [ "$stop_stage" -ge 7 ]; then
  echo "$(date +%T) stage 7: report -> $exp/report/report.md"
  run python -m nawsv.bin.report --config "$(config report.yaml)" --exp_dir "$exp"
fi

if [ "$stage" -le 8 ] && [ "$stop_stage" -ge 8 ]; then
  echo "$(date +%T) stage 8: export -> $exp/export"
  calibrators=()
  [ "$calibration" = false ] || calibrators=(--calibrators "$exp/calibration/calibrators.json")
  run python -m nawsv.bin.export --model "$exp/finetune/avg_model.pt" --out_dir "$exp/export" \
    --config "$(config extract.yaml)" "${calibrators[@]}"
fi

if [ "$ablation" = true ] && [ "$stop_stage" -ge 3 ]; then
  first=$(( stage > 3 ? stage : 3 )); last=$(( stop_stage < 7 ? stop_stage : 7 ))
  if [ "$first" -le "$last" ]; then
    echo "$(date +%T) ablation: baseline without warm-up, stages $first-$last -> $baseline_exp"
    bash "$root/run.sh" "${argv[@]}" --stage "$first" --stop_stage "$last" --skip_warmup true \
      --exp "$baseline_exp" --ablation false
  fi
  if [ "$stop_stage" -ge 7 ]; then
    echo "$(date +%T) comparison: baseline vs NAW-SV -> $compare_dir/compare.md"
    run python -m nawsv.bin.compare "$baseline_exp" "$exp" --out "$compare_dir"
  fi
fi

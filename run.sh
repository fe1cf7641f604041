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
pretrained=             # local Hugging Face WavLM dir (e.g. wavlm-base-plus); empty: the config's ssl.pretrained
skip_warmup=false       # baseline: no stage 3, stage 4 fine-tunes the pre-trained model directly
warmup_config=warmup.yaml      # stage-3 config file name (in $conf, else $root/conf)
finetune_config=finetune.yaml  # stage-4 config file name
device=auto             # auto | cpu | cuda
nproc=1                 # training processes per node (GPUs); > 1 launches torchrun
nnodes=1                # nodes for multi-node training (torchrun c10d rendezvous)
rdzv_endpoint=          # host:port of the rendezvous when nnodes > 1
python=                 # interpreter; default: $root/.venv/bin/python (created by tools/install.sh)
dry_run=false           # print the commands instead of running them
recipe_options=         # recipe option names forwarded to local/prepare_data.sh (set in defaults.sh)
. "$recipe/defaults.sh"

help_message="Usage: bash run.sh [--recipe egs/<name>] [--stage N] [--stop_stage M] [--option value ...]
Stages: 1 data preparation, 2 noisy test sets, 3 NAW-SV warm-up, 4 fine-tuning."
parse_options_names="recipe stage stop_stage data exp conf nj train_set test_sets materialize_noisy pretrained
  skip_warmup warmup_config finetune_config device nproc nnodes rdzv_endpoint python dry_run $recipe_options"
. "$root/tools/parse_options.sh"
[ $# -eq 0 ] || { echo "run.sh: unexpected argument '$1' (options are --name value)" >&2; exit 1; }

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

# The stage config: the recipe's own file when it has one, else the shared default in conf/.
config() { if [ -f "$conf/$1" ]; then echo "$conf/$1"; else echo "$root/conf/$1"; fi; }

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
pretrained_args=()
[ -z "$pretrained" ] || pretrained_args=(--pretrained "$pretrained")

recipe_args=()
for name in $recipe_options; do recipe_args+=("--$name" "${!name}"); done

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  echo "stage 1: data preparation -> $data"
  run bash "$recipe/local/prepare_data.sh" --data "$data" --nj "$nj" --config "$(config prepare.yaml)" \
    "${recipe_args[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  echo "stage 2: noisy test sets -> $data/<set>_<category>_<snr>"
  for set in $test_sets; do
    run python -m nawsv.bin.make_noisy_sets --config "$(config noisy.yaml)" --data "$data/$set" \
      --out_root "$data" --musan "$data/musan_test" --nonspeech "$data/nonspeech" \
      --materialize "$materialize_noisy" --nj "$nj"
  done
fi

if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  if [ "$skip_warmup" = true ]; then
    echo "stage 3: NAW-SV warm-up skipped (--skip_warmup true: baseline)"
  else
    echo "stage 3: NAW-SV warm-up -> $exp/warmup"
    train warmup --config "$(config "$warmup_config")" --train_data "$data/$train_set" \
      --musan "$data/musan_train" --exp_dir "$exp/warmup" --device "$device" "${pretrained_args[@]}"
  fi
fi

if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  echo "stage 4: fine-tuning -> $exp/finetune"
  init=$exp/warmup/student.pt
  [ "$skip_warmup" = false ] || init=none
  train finetune --config "$(config "$finetune_config")" --train_data "$data/$train_set" \
    --musan "$data/musan_train" --rirs "$data/rirs" --init "$init" --exp_dir "$exp/finetune" --device "$device" \
    "${pretrained_args[@]}"
fi

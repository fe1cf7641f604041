#!/usr/bin/env bash
# Stage 4 (phase 2) through WeSpeaker's own trainer: the three runs of WeSpeaker's WavLM recipe with NAW-SV's
# modules (frozen front-end, joint fine-tuning, large-margin fine-tuning), each starting from the previous run's
# final model, then WeSpeaker's average_model.py over the last run's epochs and the conversion to nawsv's
# <exp_dir>/avg_model.pt, which stages 5-8 read. Runs in .venv-wespeaker (bash tools/install.sh --wespeaker).
#   bash tools/wespeaker_phase2.sh --conf_dir egs/voxceleb/conf/wespeaker --train_data data/vox1_dev \
#     --init exp/nawsv/warmup/student.pt --exp_dir exp/nawsv/finetune [--nproc 4] [--cpu auto|true|false]
# --cpu true: WeSpeaker's calls in one CPU process (its train() needs CUDA); auto: true when no GPU is visible.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conf_dir= train_data= init= exp_dir= nproc=1 cpu=auto
runs="frozen joint_ft joint_lmft"
while [ $# -gt 0 ]; do
  case "$1" in
    --conf_dir|--train_data|--init|--exp_dir|--nproc|--cpu|--runs) declare "${1#--}=${2:?$1 needs a value}"; shift ;;
    *) echo "wespeaker_phase2.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done
for name in conf_dir train_data init exp_dir; do
  [ -n "${!name}" ] || { echo "wespeaker_phase2.sh: --$name is required" >&2; exit 2; }
done
[ -f "$init" ] || [ -d "$init" ] || { echo "wespeaker_phase2.sh: --init $init does not exist (run stage 3)" >&2; exit 1; }
py=${NAWSV_WESPEAKER_VENV:-$root/.venv-wespeaker}/bin/python
[ -x "$py" ] || { echo "wespeaker_phase2.sh: no WeSpeaker environment; run: bash tools/install.sh --wespeaker" >&2; exit 1; }

launch=("$py" -m nawsv.integrations.wespeaker.train)
[ "$nproc" -le 1 ] || launch=("$py" -m torch.distributed.run --standalone --nproc_per_node "$nproc"
                               -m nawsv.integrations.wespeaker.train)
model_init=None                      # fire (WeSpeaker's CLI parser) reads None, True, False as Python values
[ "$cpu" != auto ] || cpu=$("$py" -c 'import torch; print(str(not torch.cuda.is_available()).lower())')
case "$cpu" in true) cpu=True ;; false) cpu=False ;; *) echo "wespeaker_phase2.sh: --cpu takes auto, true or false" >&2; exit 2 ;; esac
data_dir=$(dirname "$train_data")    # stage 1's MUSAN train half and RIRs as WeSpeaker's LMDB banks (built once):
bank_args=($("$py" -m nawsv.integrations.wespeaker.augment --musan "$data_dir/musan_train" --rirs "$data_dir/rirs"))
last=
for run in $runs; do
  out=$exp_dir/wespeaker/$run
  if [ -e "$out/models/final_model.pt" ]; then
    echo "wespeaker_phase2.sh: $run already trained ($out)"
  else
    resume=()                                  # a killed run continues from its newest epoch checkpoint
    newest=$(ls -1v "$out/models"/model_*.pt 2>/dev/null | tail -n 1 || true)
    [ -z "$newest" ] || resume=(--checkpoint "$newest")
    echo "wespeaker_phase2.sh: WeSpeaker run $run -> $out${newest:+ (resuming from $newest)}"
    "${launch[@]}" --config "$conf_dir/nawsv_$run.yaml" --exp_dir "$out" --train_data "$train_data/raw.list" \
      --train_label "$train_data/utt2spk" --data_type raw --model_init "$model_init" --ssl_init "$init" \
      --cpu "$cpu" "${resume[@]}" "${bank_args[@]}"
  fi
  model_init=$(cd "$out/models" && pwd)/final_model.pt
  last=$out
done
num_avg=$("$py" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["num_avg"])' "$last/config.yaml")
"$py" -m wespeaker.bin.average_model --dst_model "$last/models/avg_model.pt" --src_path "$last/models" \
  --num "$num_avg" >/dev/null
"$py" -m nawsv.integrations.wespeaker.convert to-nawsv --exp_dir "$last" --out "$exp_dir/avg_model.pt"
echo "wespeaker_phase2.sh: wrote $exp_dir/avg_model.pt"

#!/usr/bin/env bash
# Stage 4 (phase 2) through WeSpeaker's own trainer: the three runs of WeSpeaker's WavLM recipe with NAW-SV's
# modules (frozen front-end, joint fine-tuning, large-margin fine-tuning), chained as WeSpeaker's run_wavlm.sh
# chains them (the previous run's avg_model.pt as models/model_0.pt + --checkpoint: the AAM head carries over),
# then WeSpeaker's average_model.py over the last run and the conversion to nawsv's <exp_dir>/avg_model.pt, which
# stages 5-8 read. Runs in .venv-wespeaker (bash tools/install.sh --wespeaker).
#   bash tools/wespeaker_phase2.sh --conf_dir egs/voxceleb/conf/wespeaker --train_data data/vox1_dev \
#     --init exp/nawsv/warmup/student.pt --exp_dir exp/nawsv/finetune [--nproc 4] [--device auto|cuda|cpu] \
#     [--nnodes 2 --rdzv_endpoint host:port] [--runs "frozen joint_ft joint_lmft"] [-- --top_level_key value ...]
# Multi-node: the same command on every node (tools/slurm/train.sbatch does it through run.sh); all nodes meet at
# one c10d rendezvous, one process group. --device cpu: WeSpeaker's train() through the CPU shim (gloo).
# Arguments after -- go to every run as WeSpeaker's top-level config overrides.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conf_dir= train_data= init= exp_dir= nproc=1 nnodes=1 rdzv_endpoint= device=auto
runs="frozen joint_ft joint_lmft"
overrides=()
while [ $# -gt 0 ]; do
  case "$1" in
    --conf_dir|--train_data|--init|--exp_dir|--nproc|--nnodes|--rdzv_endpoint|--device|--runs)
      declare "${1#--}=${2:?$1 needs a value}"; shift ;;
    --) shift; overrides=("$@"); break ;;
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
export PYTHONPATH=$root${PYTHONPATH:+:$PYTHONPATH}

[ "$device" != auto ] || device=$("$py" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')
case "$device" in cpu) cpu=True ;; cuda) cpu=False ;;
  *) echo "wespeaker_phase2.sh: --device takes auto, cuda or cpu, got '$device'" >&2; exit 2 ;; esac
launch=("$py" -m nawsv.integrations.wespeaker.train)
if [ "$nproc" -gt 1 ] || [ "$nnodes" -gt 1 ]; then       # the same torchrun options as run.sh's nawsv trainer
  rdzv=(--standalone)
  if [ "$nnodes" -gt 1 ]; then
    [ -n "$rdzv_endpoint" ] || { echo "wespeaker_phase2.sh: --nnodes $nnodes needs --rdzv_endpoint host:port" >&2; exit 2; }
    rdzv=(--rdzv_backend c10d --rdzv_endpoint "$rdzv_endpoint")
  fi
  launch=("$py" -m torch.distributed.run --nnodes "$nnodes" --nproc_per_node "$nproc" "${rdzv[@]}"
          -m nawsv.integrations.wespeaker.train)
fi

data_dir=$(dirname "$train_data")    # stage 1's MUSAN train half and RIRs as WeSpeaker's LMDB banks (built once)
mapfile -t bank_args < <("$py" -m nawsv.integrations.wespeaker.augment --musan "$data_dir/musan_train" \
                                                                      --rirs "$data_dir/rirs")
[ "${#bank_args[@]}" -eq 4 ] || { echo "wespeaker_phase2.sh: building the LMDB banks failed (see above)" >&2; exit 1; }
previous=()
for run in $runs; do
  out=$exp_dir/wespeaker/$run
  start=$("$py" -m nawsv.integrations.wespeaker.runs prepare "$out" "${previous[@]}")
  if [ "$start" = done ]; then
    echo "wespeaker_phase2.sh: $run already trained ($out)"
  else
    echo "wespeaker_phase2.sh: WeSpeaker run $run -> $out${start:+ (from $start)}"
    "${launch[@]}" --config "$conf_dir/nawsv_$run.yaml" --exp_dir "$out" --train_data "$train_data/raw.list" \
      --train_label "$train_data/utt2spk" --data_type raw --ssl_init "$init" --cpu "$cpu" \
      ${start:+--checkpoint "$start"} "${bank_args[@]}" "${overrides[@]}"
  fi
  previous=("$out")
done
"$py" -m nawsv.integrations.wespeaker.runs average "${previous[@]}" >/dev/null
"$py" -m nawsv.integrations.wespeaker.convert to-nawsv --exp_dir "${previous[@]}" --out "$exp_dir/avg_model.pt"
echo "wespeaker_phase2.sh: wrote $exp_dir/avg_model.pt"

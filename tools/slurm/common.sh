# Shared by the templates (sourced from the checkout: Slurm runs a copy of the batch script elsewhere).
# Sets job (0..n-1), num_jobs and first (the array index of job 0) from the Slurm array variables; or, when
# ARRAY=<first>-<last> is set, from that range: the --array of the original submission, which a resubmitted
# index (sbatch --array=5 --export=ALL,ARRAY=0-31 ...) needs to keep its share of the original split.
array_job_index() {
  local last
  if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "$1: not an array task; submit with sbatch --array=0-<n-1>" >&2
    return 1
  fi
  if [ -n "${ARRAY:-}" ]; then
    array_range "$1" || return 1
    if [ "$SLURM_ARRAY_TASK_ID" -lt "$first" ] || [ "$SLURM_ARRAY_TASK_ID" -ge $((first + num_jobs)) ]; then
      echo "$1: array index $SLURM_ARRAY_TASK_ID is outside ARRAY=$ARRAY (the original --array range)" >&2
      return 1
    fi
  else
    first=${SLURM_ARRAY_TASK_MIN:-} last=${SLURM_ARRAY_TASK_MAX:-} num_jobs=${SLURM_ARRAY_TASK_COUNT:-}
    if [ -z "$first" ] || [ -z "$num_jobs" ]; then
      echo "$1: not an array task; submit with sbatch --array=0-<n-1>" >&2
      return 1
    fi
    if [ $((last - first + 1)) -ne "$num_jobs" ]; then
      echo "$1: --array must be a contiguous range such as 0-31 (no steps or lists); to resubmit some" \
        "indices of an array, set ARRAY to its original range (--export=ALL,ARRAY=0-31)" >&2
      return 1
    fi
  fi
  job=$((SLURM_ARRAY_TASK_ID - first))
}

# Sets first and num_jobs from ARRAY=<first>-<last> (the --array range of the array).
array_range() {
  if ! [[ "${ARRAY:-}" =~ ^([0-9]+)-([0-9]+)$ ]] || [ "${BASH_REMATCH[1]}" -gt "${BASH_REMATCH[2]}" ]; then
    echo "$1: ARRAY must be the --array range of the array, such as 0-31, got '${ARRAY:-}'" >&2
    return 1
  fi
  first=$((10#${BASH_REMATCH[1]}))
  num_jobs=$((10#${BASH_REMATCH[2]} - first + 1))
}

# Prints the GPUs Slurm allocated per node: --gpus-per-node (SLURM_GPUS_PER_NODE, "4" or typed "a100:4"), else
# this node's count (SLURM_GPUS_ON_NODE: --gres=gpu:N or --gpus=N).
allocated_gpus_per_node() {
  local given=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
  local count=${given##*:}
  if [ -z "$count" ] || [ "$count" = 0 ]; then
    echo "$1: no GPUs in this allocation; request them (sbatch --gpus-per-node=N, or --gpus=1 for an array" \
      "task), or set DEVICE=cpu for a CPU run" >&2
    return 1
  fi
  if [[ "$given" == *,* || "$count" == *[!0-9]* ]]; then     # several GPU types: say how many processes
    echo "$1: cannot read a GPU count from '$given'; set NPROC_PER_NODE" >&2
    return 1
  fi
  echo "$count"
}

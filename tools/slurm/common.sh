# Shared by the array templates (sourced from the checkout: Slurm runs a copy of the batch script elsewhere).
# Sets job (0..n-1, whatever the first array index) and num_jobs from the Slurm array variables.
array_job_index() {
  local first=${SLURM_ARRAY_TASK_MIN:-} last=${SLURM_ARRAY_TASK_MAX:-}
  num_jobs=${SLURM_ARRAY_TASK_COUNT:-}
  if [ -z "$first" ] || [ -z "$num_jobs" ] || [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "$1: not an array task; submit with sbatch --array=0-<n-1>" >&2
    return 1
  fi
  if [ $((last - first + 1)) -ne "$num_jobs" ]; then
    echo "$1: --array must be a contiguous range such as 0-31 (no steps or lists)" >&2
    return 1
  fi
  job=$((SLURM_ARRAY_TASK_ID - first))
}

#!/usr/bin/env bash
# Create .venv (if missing) and install nawsv with everything it needs.
# CPU torch by default; --cuda keeps an existing CUDA torch or installs the CUDA build.
# Extras: [dev] (tests), [m4a] (VoxCeleb2 AAC), [onnx] (ONNX export), so that every test runs.
# Idempotent: a stamp records what was installed, so a second run only checks it.
# --wespeaker builds the separate WeSpeaker-trainer environment instead (tools/install_wespeaker.sh).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bash tools/install.sh [--cuda | --wespeaker] [--force] [--python PY]
  --cuda        install (or keep) a CUDA build of torch instead of the CPU wheel
  --wespeaker   build .venv-wespeaker: WeSpeaker's trainer (torch/torchaudio 2.8.0, s3prl, ...) + nawsv
  --force       reinstall even if the environment looks complete
  --python PY   interpreter used to create the venv (default: python3; needs >= 3.10)
Environment: NAWSV_VENV (default <repo>/.venv), NAWSV_TORCH_CPU_SPEC (default torch==2.13.0),
             NAWSV_TORCH_CUDA_SPEC (default "torch>=2.1,<3");
             with --wespeaker: WESPEAKER_ROOT (a WeSpeaker checkout; default <repo>/../shared/third_party/wespeaker),
             NAWSV_WESPEAKER_VENV (default <repo>/.venv-wespeaker).
USAGE
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${NAWSV_VENV:-$root/.venv}
python=python3
flavour=cpu
force=false
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) flavour=cuda ;;
    --wespeaker) flavour=wespeaker ;;
    --force) force=true ;;
    --python) python=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

fail() { echo "install.sh: ERROR: $*" >&2; exit 1; }

# pip, quiet on success: its warnings (e.g. setuptools' multi-line "editable installation" block) would bury
# nawsv's own lines; on failure the whole log is shown so pip's error is never hidden.
pip_quiet() {
  local log rc=0
  log=$(mktemp)
  "$py" -m pip install --quiet "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || cat "$log" >&2
  rm -f "$log"
  return "$rc"
}

make_venv() {
  [ -x "$venv/bin/python" ] && return 0
  command -v "$python" >/dev/null || fail "'$python' not found; install Python >= 3.10 or pass --python"
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || fail "$("$python" --version 2>&1) is too old; nawsv needs Python >= 3.10"
  echo "install.sh: creating $venv"
  "$python" -m venv "$venv" || fail "could not create a virtual environment at $venv (is python3-venv installed?)"
}

if [ "$flavour" = wespeaker ]; then
  venv=${NAWSV_WESPEAKER_VENV:-$root/.venv-wespeaker}
  py=$venv/bin/python
  . "$root/tools/install_wespeaker.sh"
  exit 0
fi

make_venv
py=$venv/bin/python

# The stamp names what was installed; when it matches and the imports work, nothing slow runs.
want="$flavour $(cat "$root/setup.py" "$root/tools/install.sh" | cksum | cut -d' ' -f1)"
stamp=$venv/.nawsv-install-stamp
if [ "$force" = false ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
   && "$py" -c 'import nawsv, torch, transformers, kaldiio, soundfile, soxr, pytest, av, onnx, onnxruntime' 2>/dev/null; then
  echo "install.sh: $venv is up to date"
  exit 0
fi

pip_quiet --upgrade pip setuptools wheel || fail "could not upgrade pip in $venv"

have_torch=$("$py" -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo none)
if [ "$flavour" = cpu ] && [ "$have_torch" = none ]; then
  spec=${NAWSV_TORCH_CPU_SPEC:-torch==2.13.0}
  echo "install.sh: installing CPU torch ($spec)"
  pip_quiet "$spec" || fail "pip could not install '$spec'; set NAWSV_TORCH_CPU_SPEC or use --cuda"
elif [ "$flavour" = cuda ] && [ "$have_torch" != cuda ]; then
  spec=${NAWSV_TORCH_CUDA_SPEC:-torch>=2.1,<3}
  echo "install.sh: installing CUDA torch ($spec)"
  pip_quiet "$spec" || fail "pip could not install '$spec'"
else
  echo "install.sh: keeping the installed torch ($have_torch)"
fi

echo "install.sh: installing nawsv and its dependencies"
pip_quiet -e "$root[dev,m4a,onnx]" \
  || fail "pip install -e '$root[dev,m4a,onnx]' failed (see the pip output above)"
"$py" -c 'import nawsv, torch, transformers, kaldiio, soundfile, soxr, pytest, av, onnx, onnxruntime' \
  || fail "the environment was installed but an import fails (see above)"
echo "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "install.sh: done ($("$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"

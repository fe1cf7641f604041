#!/usr/bin/env bash
# Run the test suite, installing the environment first when it is missing or out of date.
# Extra arguments go to pytest, e.g. bash tools/test.sh -k kaldi -x
# Without arguments (CI) the WeSpeaker integration tests (tests/wespeaker) also run, in .venv-wespeaker, which
# tools/install.sh --wespeaker builds or refreshes from the checkout at WESPEAKER_ROOT
# (default ../shared/third_party/wespeaker); NAWSV_WESPEAKER_TESTS=always runs them with arguments too.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/install.sh"
cd "$root"
set +e
"$root/.venv/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi

loud() { printf '\ntest.sh: %s\n%s\n%s\n\n' "$(printf '%.0s#' {1..100})" "test.sh: $*" "test.sh: $(printf '%.0s#' {1..100})" >&2; }
ws_root=${WESPEAKER_ROOT:-$root/../shared/third_party/wespeaker}
if [ $# -gt 0 ] && [ "${NAWSV_WESPEAKER_TESTS:-}" != always ]; then
  echo "test.sh: WeSpeaker integration tests not run (pytest arguments given; NAWSV_WESPEAKER_TESTS=always runs them)"
elif [ ! -f "$ws_root/wespeaker/bin/train.py" ]; then
  loud "SKIPPED the WeSpeaker integration tests (tests/wespeaker): no WeSpeaker checkout at $ws_root; set WESPEAKER_ROOT"
else
  WESPEAKER_ROOT=$ws_root bash "$root/tools/install.sh" --wespeaker
  ws_python=${NAWSV_WESPEAKER_VENV:-$root/.venv-wespeaker}/bin/python
  echo "test.sh: WeSpeaker integration tests (tests/wespeaker) in $("$ws_python" -c 'import sys; print(sys.prefix)')"
  set +e
  start=$SECONDS
  "$ws_python" -m pytest tests/wespeaker -p no:warnings "$@"
  ws_status=$?
  set -e
  echo "test.sh: WeSpeaker integration tests took $((SECONDS - start)) s"
  [ "$status" -ne 0 ] || status=$ws_status
fi
exit "$status"

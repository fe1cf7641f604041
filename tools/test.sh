#!/usr/bin/env bash
# Run the test suite, installing the environment first when it is missing or out of date.
# Extra arguments go to pytest, e.g. bash tools/test.sh -k kaldi -x
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
exit "$status"

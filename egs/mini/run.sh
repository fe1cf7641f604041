#!/usr/bin/env bash
# Embedded default recipe: synthetic corpus, tiny random-init WavLM, CPU minutes. See ../../run.sh.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/../../run.sh" --recipe "$here" "$@"

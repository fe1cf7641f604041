#!/usr/bin/env bash
# Mini recipe, stage 1: generate the synthetic corpora, then prepare them exactly like real data.
set -euo pipefail
data=data
nj=2
config=
corpus=corpus
. "$(dirname "${BASH_SOURCE[0]}")/../../../tools/parse_options.sh"
conf_dir=$(dirname "$config")
mini_conf=$(dirname "${BASH_SOURCE[0]}")/../conf

python -m nawsv.bin.make_mini_corpus --out "$corpus" --config "$mini_conf/corpus.yaml"
python -m nawsv.bin.prepare_data speakers --config "$config" --override nj="$nj" \
  --wav_root "$corpus/voxceleb/dev/wav" --out "$data/mini_dev"
python -m nawsv.bin.prepare_data speakers --config "$config" --override nj="$nj" \
  --wav_root "$corpus/voxceleb/test/wav" --out "$data/mini_test" --trials "mini_O=$corpus/voxceleb/veri_test.txt"
python -m nawsv.bin.prepare_data musan --config "$config" --override nj="$nj" \
  --musan_root "$corpus/musan" --out_root "$data"
python -m nawsv.bin.prepare_data bank --config "$config" --override nj="$nj" \
  --root "$corpus/RIRS_NOISES/simulated_rirs" --out "$data/rirs" --category rir
python -m nawsv.bin.prepare_data bank --config "$config" --override nj="$nj" \
  --root "$corpus/Nonspeech" --out "$data/nonspeech" --category nonspeech

#!/usr/bin/env bash
# VoxCeleb recipe, stage 1: real corpora -> Kaldi dirs, trial lists, MUSAN halves, RIR and Nonspeech100 banks.
# VoxCeleb1 may come as the official zips (vox1_dev_wav/wav, vox1_test_wav/wav) or as WeSpeaker's data
# preparation leaves it (dev/wav, test/wav); Nonspeech100 is optional (no nonspeech cells without it).
# Shell glue only: every step is `python -m nawsv.bin.prepare_data <kind>`; layouts are described in ../README.md.
set -euo pipefail
data=data
nj=4
config=
vox1_root=
vox2_root=
vox2_wav_dir=
vox2_flac_dir=
musan_root=
rirs_root=
nonspeech_root=
trials_dir=
train_corpus=vox1
train_shards=false
. "$(dirname "${BASH_SOURCE[0]}")/../../../tools/parse_options.sh"

die() { echo "egs/voxceleb stage 1: $*" >&2; exit 1; }
for name in vox1_root musan_root rirs_root; do
  [ -n "${!name}" ] || die "--$name is required (see egs/voxceleb/README.md for the expected layout)"
done
if [ -z "$trials_dir" ]; then
  trials_dir=$vox1_root
  [ -f "$trials_dir/veri_test2.txt" ] || [ ! -f "$vox1_root/test/veri_test2.txt" ] || trials_dir=$vox1_root/test
fi
[ -f "$trials_dir/veri_test2.txt" ] || die "$trials_dir/veri_test2.txt (Vox1-O cleaned) not found; set --trials_dir"
if [ -d "$vox1_root/vox1_test_wav/wav" ]; then          # the official zips
  vox1_dev=$vox1_root/vox1_dev_wav/wav vox1_test=$vox1_root/vox1_test_wav/wav
elif [ -d "$vox1_root/test/wav" ]; then                  # WeSpeaker's data preparation (and egs/mini)
  vox1_dev=$vox1_root/dev/wav vox1_test=$vox1_root/test/wav
else
  die "--vox1_root $vox1_root matches no VoxCeleb1 layout: looked for vox1_test_wav/wav (+ vox1_dev_wav/wav, the \
official zips) and test/wav (+ dev/wav, WeSpeaker's data preparation)"
fi
[ -d "$vox1_dev" ] || die "$vox1_dev (the VoxCeleb1 dev tree beside $vox1_test) not found"

prep() { python -m nawsv.bin.prepare_data "$@" --config "$config" --override nj="$nj"; }

# --trials NAME=FILE options for the official lists that exist in $trials_dir (missing ones are reported).
trial_options() {
  local pair file
  for pair in "$@"; do
    file=$trials_dir/${pair#*=}
    if [ -f "$file" ]; then
      printf '%s\n' --trials "${pair%%=*}=$file"
    else
      echo "egs/voxceleb stage 1: $file not found; trial list ${pair%%=*} is left out" >&2
    fi
  done
}

prep musan --musan_root "$musan_root" --out_root "$data"
prep bank --root "$rirs_root/simulated_rirs" --out "$data/rirs" --category rir
if [ -n "$nonspeech_root" ]; then
  prep bank --root "$nonspeech_root" --out "$data/nonspeech" --category nonspeech
else
  echo "egs/voxceleb stage 1: no --nonspeech_root: no nonspeech bank, stage 2 builds the 15 MUSAN conditions only"
  [ ! -e "$data/nonspeech" ] || die "$data/nonspeech exists from an earlier run with Nonspeech100; remove it (or \
pass --nonspeech_root again) so that stage 2 does not use a stale bank"
fi

mapfile -t o_trials < <(trial_options vox1_O=veri_test2.txt vox1_O_orig=veri_test.txt)
prep speakers --wav_root "$vox1_test" --out "$data/vox1_test" --expect vox1_test "${o_trials[@]}"

case "$train_corpus" in
  vox1)
    prep speakers --wav_root "$vox1_dev" --out "$data/vox1_dev" --expect vox1_dev \
      --override shards="$train_shards" ;;
  vox2)
    mapfile -t eh_trials < <(trial_options vox1_E=list_test_all2.txt vox1_H=list_test_hard2.txt \
      vox1_E_orig=list_test_all.txt vox1_H_orig=list_test_hard.txt)
    prep speakers --wav_root "$vox1_dev" --wav_root "$vox1_test" \
      --out "$data/vox1_all" --expect vox1_all "${eh_trials[@]}"
    vox2_tree=$vox2_wav_dir
    if [ -z "$vox2_tree" ]; then
      [ -n "$vox2_root" ] || die "--train_corpus vox2 needs --vox2_root (or an already decoded --vox2_wav_dir)"
      vox2_tree=${vox2_flac_dir:-$data/audio/vox2_dev}
      prep convert --src_root "$vox2_root/dev/aac" --dst_root "$vox2_tree"
    fi
    prep speakers --wav_root "$vox2_tree" --out "$data/vox2_dev" --expect vox2_dev --override shards="$train_shards" ;;
  *) die "--train_corpus must be vox1 or vox2, got '$train_corpus'" ;;
esac

#!/usr/bin/env bash
# The paper's recipe on real data: VoxCeleb1/2, MUSAN, RIRS_NOISES, Nonspeech100 (see README.md here).
#   bash run.sh --vox1_root /data/voxceleb1 --musan_root /data/musan --rirs_root /data/RIRS_NOISES \
#     --nonspeech_root /data/Nonspeech --pretrained /models/wavlm-base-plus [--train_corpus vox2 --vox2_root ...]
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec bash "$here/../../run.sh" --recipe "$here" "$@"

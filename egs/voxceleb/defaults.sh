# Options of the VoxCeleb recipe (run.sh --name value). Sourced by the stage engine before option parsing,
# so every variable set here is an option. Corpus roots have no default: nothing is hard-coded.
vox1_root=              # holds vox1_dev_wav/wav/... and vox1_test_wav/wav/... (the official zips) or dev/wav/...
                        # and test/wav/... (WeSpeaker's data preparation), <spk>/<video>/<n>.wav below
vox2_root=              # holds dev/aac/<spk>/<video>/<n>.m4a (only for --train_corpus vox2)
vox2_wav_dir=           # an already decoded Vox2 dev tree (<spk>/<video>/<n>.wav|.flac): skips the conversion
vox2_flac_dir=          # where the one-time m4a -> 16 kHz FLAC conversion writes (default: <data>/audio/vox2_dev)
musan_root=             # holds music/ noise/ speech/
rirs_root=              # RIRS_NOISES (only simulated_rirs/ is used, as in the paper)
nonspeech_root=         # the Nonspeech100 folder (n1.wav ... n100.wav); optional: without it, no nonspeech cells
trials_dir=             # folder with veri_test2.txt, list_test_all2.txt, list_test_hard2.txt and the uncleaned
                        # veri_test.txt, list_test_all.txt, list_test_hard.txt (default: <vox1_root>)
train_corpus=vox1       # vox1: train on Vox1 dev, test Vox1-O; vox2: train on Vox2 dev, test Vox1-O/E/H
train_shards=false      # also write tar shards of the training set (set data.list_type: shard to use them)
skip_warmup=false       # true: the baseline, fine-tuning WavLM Base+ without the NAW-SV warm-up
protocol=nawsv          # nawsv: nawsv's fixed version; released: every switch at the released code's value
backbone=wavlm_base_plus     # the SSL model: wavlm_base_plus (the paper's), hubert_base, wavlm_large (conf/*_<backbone>_*)
recipe_switches="protocol backbone"   # read here only (not passed to local/prepare_data.sh)
pretrained=${pretrained:-}   # local Hugging Face dir of the backbone, e.g. microsoft/wavlm-base-plus (stages 3-4)
recipe_options="vox1_root vox2_root vox2_wav_dir vox2_flac_dir musan_root rirs_root nonspeech_root trials_dir
  train_corpus train_shards"

# train_corpus and skip_warmup choose the sets, configs and experiment dir below. This file is read before
# the options are parsed, so take their values from the command line here; every derived value stays an
# option of its own (--train_set, --test_sets, --warmup_config, ... override it).
__vc_args=("$@")
for ((__vc_i = 0; __vc_i < ${#__vc_args[@]}; __vc_i++)); do
  case "${__vc_args[__vc_i]}" in
    --train_corpus|--train-corpus) train_corpus=${__vc_args[__vc_i + 1]:-} ;;
    --train_corpus=*|--train-corpus=*) train_corpus=${__vc_args[__vc_i]#*=} ;;
    --skip_warmup|--skip-warmup) skip_warmup=${__vc_args[__vc_i + 1]:-} ;;
    --skip_warmup=*|--skip-warmup=*) skip_warmup=${__vc_args[__vc_i]#*=} ;;
    --protocol) protocol=${__vc_args[__vc_i + 1]:-} ;;
    --protocol=*) protocol=${__vc_args[__vc_i]#*=} ;;
    --backbone) backbone=${__vc_args[__vc_i + 1]:-} ;;
    --backbone=*) backbone=${__vc_args[__vc_i]#*=} ;;
  esac
done
unset __vc_args __vc_i
case "$skip_warmup" in
  true|false) ;;
  *) echo "egs/voxceleb: --skip_warmup takes true or false, got '$skip_warmup'" >&2; exit 1 ;;
esac

# The protocol picks the configs (released_*.yaml: every switch of nawsv/protocol.py at the released value), a
# separate experiment dir and a separate folder for the noisy test sets, whose audio differs between protocols.
case "$protocol" in
  nawsv) prefix= suffix= ;;
  released) prefix=released_ suffix=_released
    noisy_dir=released
    noisy_config=released_noisy.yaml
    score_config=released_score.yaml ;;
  *) echo "egs/voxceleb: --protocol must be nawsv or released, got '$protocol'" >&2; exit 1 ;;
esac

case "$train_corpus" in
  vox1)  # Vox1-E/H draw on Vox1 dev, i.e. on the training speakers: only Vox1-O is a valid test.
    train_set=vox1_dev
    test_sets=vox1_test ;;
  vox2)  # vox1_all = Vox1 dev + test, the utterances of the Vox1-E/H trials; noisy copies of Vox1-O only.
    train_set=vox2_dev
    test_sets="vox1_test vox1_all" ;;
  *) echo "egs/voxceleb: --train_corpus must be vox1 or vox2, got '$train_corpus'" >&2; exit 1 ;;
esac
if [ "$protocol" = released ] && [ "$backbone" != wavlm_base_plus ]; then
  echo "egs/voxceleb: --protocol released reproduces the authors' WavLM Base+ runs only; use --backbone" \
    "wavlm_base_plus, or --protocol nawsv with --backbone $backbone" >&2
  exit 1
fi
if [ ! -f "$recipe/conf/${train_corpus}_${backbone}_warmup.yaml" ]; then
  __vc_known=$(cd "$recipe/conf" && ls ${train_corpus}_*_warmup.yaml | sed "s/^${train_corpus}_//; s/_warmup.yaml$//")
  echo "egs/voxceleb: --backbone '$backbone' has no configs (conf/${train_corpus}_${backbone}_{warmup,finetune}.yaml);" \
    "choose from:" $__vc_known >&2
  exit 1
fi
noisy_test_sets=vox1_test                                    # stage 2: test sets that get noisy copies
warmup_config=${prefix}${train_corpus}_${backbone}_warmup.yaml   # a file name is looked up in conf/, a path as is
__vc_name=$train_corpus                                      # exp/<corpus>[_<backbone>]_{nawsv,baseline}[_released]
[ "$backbone" = wavlm_base_plus ] || __vc_name=${train_corpus}_${backbone}
if [ "$skip_warmup" = true ]; then
  finetune_config=${prefix}baseline_finetune.yaml
  exp=$recipe/exp/${__vc_name}_baseline$suffix
else
  finetune_config=${prefix}${train_corpus}_${backbone}_finetune.yaml
  exp=$recipe/exp/${__vc_name}_nawsv$suffix
fi
baseline_exp=$recipe/exp/${__vc_name}_baseline$suffix          # --ablation true: where the baseline goes
compare_dir=$recipe/exp/${__vc_name}_compare$suffix            # --ablation true: the comparison table and plots
unset prefix suffix __vc_name

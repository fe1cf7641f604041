# Options of the VoxCeleb recipe (run.sh --name value). Sourced by the stage engine before option parsing,
# so every variable set here is an option. Corpus roots have no default: nothing is hard-coded.
vox1_root=              # holds vox1_dev_wav/wav/<spk>/<video>/<n>.wav and vox1_test_wav/wav/...
vox2_root=              # holds dev/aac/<spk>/<video>/<n>.m4a (only for --train_corpus vox2)
vox2_wav_dir=           # an already decoded Vox2 dev tree (<spk>/<video>/<n>.wav|.flac): skips the conversion
vox2_flac_dir=          # where the one-time m4a -> 16 kHz FLAC conversion writes (default: <data>/audio/vox2_dev)
musan_root=             # holds music/ noise/ speech/
rirs_root=              # RIRS_NOISES (only simulated_rirs/ is used, as in the paper)
nonspeech_root=         # the Nonspeech100 folder (n1.wav ... n100.wav)
trials_dir=             # folder with veri_test2.txt, list_test_all2.txt, list_test_hard2.txt and the uncleaned
                        # veri_test.txt, list_test_all.txt, list_test_hard.txt (default: <vox1_root>)
train_corpus=vox1       # vox1: train on Vox1 dev, test Vox1-O; vox2: train on Vox2 dev, test Vox1-O/E/H
train_shards=false      # also write tar shards of the training set (set data.list_type: shard to use them)
skip_warmup=false       # true: the baseline, fine-tuning WavLM Base+ without the NAW-SV warm-up
pretrained=${pretrained:-}   # local Hugging Face dir of microsoft/wavlm-base-plus (stages 3-4)
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
  esac
done
unset __vc_args __vc_i
case "$skip_warmup" in
  true|false) ;;
  *) echo "egs/voxceleb: --skip_warmup takes true or false, got '$skip_warmup'" >&2; exit 1 ;;
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
noisy_test_sets=vox1_test                                    # stage 2: test sets that get noisy copies
warmup_config=${train_corpus}_wavlm_base_plus_warmup.yaml    # a file name is looked up in conf/, a path used as is
baseline_exp=$recipe/exp/${train_corpus}_baseline          # --ablation true: where the baseline goes
compare_dir=$recipe/exp/${train_corpus}_compare             # --ablation true: the comparison table and plots
if [ "$skip_warmup" = true ]; then
  finetune_config=baseline_finetune.yaml
  exp=$recipe/exp/${train_corpus}_baseline
else
  finetune_config=${train_corpus}_wavlm_base_plus_finetune.yaml
  exp=$recipe/exp/${train_corpus}_nawsv
fi

# Sourced by tools/install.sh --wespeaker (it defines root, venv, py, python, force, fail, pip_quiet, make_venv).
# Builds the environment in which WeSpeaker's own trainer imports and runs next to nawsv: a torch/torchaudio
# pair that loads together (torchaudio < 2.9 for s3prl), WeSpeaker's train-time imports, nawsv editable.
# WeSpeaker itself is not on PyPI: the checkout at WESPEAKER_ROOT is put on the venv's path by a .pth file.

ws_root=${WESPEAKER_ROOT:-$root/../shared/third_party/wespeaker}
[ -f "$ws_root/wespeaker/bin/train.py" ] \
  || fail "WESPEAKER_ROOT='$ws_root' is not a WeSpeaker checkout (no wespeaker/bin/train.py); \
clone https://github.com/wenet-e2e/wespeaker and set WESPEAKER_ROOT to it"
ws_root=$(cd "$ws_root" && pwd -P)
torch_spec=${NAWSV_WESPEAKER_TORCH_SPEC:-torch==2.8.0 torchaudio==2.8.0}
check='import torch, torchaudio, s3prl, wespeaker.bin.train, nawsv.integrations.wespeaker.modules'

want="wespeaker $ws_root $torch_spec $(cat "$root/setup.py" "$root/tools/install.sh" "$root/tools/install_wespeaker.sh" \
  | cksum | cut -d' ' -f1)"
stamp=$venv/.nawsv-install-stamp
if [ "$force" = false ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$py" -c "$check" 2>/dev/null; then
  echo "install.sh: $venv is up to date (WeSpeaker at $ws_root)"
  return 0
fi

start=$SECONDS
make_venv
# setuptools <= 81 keeps pkg_resources, which torchnet's setup.py (a WeSpeaker executor import) needs.
pip_quiet --upgrade pip wheel "setuptools<=81" || fail "could not upgrade pip in $venv"
echo "install.sh: installing $torch_spec (the newest pair s3prl loads with)"
# shellcheck disable=SC2086  # torch_spec is a list of requirement specs
pip_quiet $torch_spec || fail "pip could not install '$torch_spec'; set NAWSV_WESPEAKER_TORCH_SPEC"
pip_quiet --no-build-isolation torchnet || fail "pip could not install torchnet"
echo "install.sh: installing nawsv with WeSpeaker's train-time dependencies"
pip_quiet -e "$root[dev,wespeaker]" || fail "pip install -e '$root[dev,wespeaker]' failed (see the pip output above)"
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ws_root" > "$site/nawsv_wespeaker_root.pth"
# s3prl prints deprecation notes on import; only a failing import's output is worth showing.
out=$("$py" -c "$check" 2>&1) || { echo "$out" >&2; fail "the WeSpeaker environment was installed but an import fails"; }
echo "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
echo "install.sh: done in $((SECONDS - start)) s: $venv ($(du -sh "$venv" | cut -f1)), WeSpeaker at $ws_root"

#!/usr/bin/env bash
# Prepare the real WebUIs for tests/realhost/check.py: a checkout of each host at its pinned commit, the
# repositories/ its launcher would clone, and a Python 3.10 venv with the host's own requirements.
#
#   tests/realhost/setup.sh [a1111] [forge] [reforge]   # default: a1111 forge, under $HOSTS (default /root/hosts)
#
#   HOSTS=/root/hosts        where the checkouts and venvs go (never inside the project)
#   MIRROR=/work/.mirror     take each repository from a bare mirror MIRROR/<owner>+<name>/repo instead of GitHub
#   PY310=/root/.pyenv/versions/3.10.13/bin/python3
#
# Nothing here is run by the test suite. The venvs are the hosts' CUDA torch builds from PyPI (about 6 GB each);
# they run on the CPU. Takes about 5 minutes per host on a fast package mirror.
set -euo pipefail

HOSTS=${HOSTS:-/root/hosts}
MIRROR=${MIRROR:-}
PY310=${PY310:-/root/.pyenv/versions/3.10.13/bin/python3}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(a1111 forge)
mkdir -p "$HOSTS"

# clone OWNER/NAME DEST COMMIT: a work tree at COMMIT; files whose blobs a mirror snapshot lacks are left out
clone() {
  local repo=$1 dest=$2 commit=$3 src
  if [[ -n "$MIRROR" ]]; then src="$MIRROR/${repo/\//+}/repo"; else src="https://github.com/$repo.git"; fi
  if [[ -d "$dest/.git" ]]; then
    echo "have $dest"
    return
  fi
  git clone -q --no-checkout "$src" "$dest"
  (cd "$dest" && { git checkout -q "$commit" 2>/dev/null || true; } && git log --oneline -1 &&
    echo "  files missing from the snapshot: $(git status --short | wc -l)")
}

venv() { # venv NAME REQUIREMENTS TORCH... : a venv with the host's requirements
  local name=$1 req=$2
  shift 2
  if [[ -x "$HOSTS/venv-$name/bin/python" ]] && "$HOSTS/venv-$name/bin/python" -c "import torch, gradio" 2>/dev/null; then
    echo "have venv-$name"
    return
  fi
  "$PY310" -m venv "$HOSTS/venv-$name"
  "$HOSTS/venv-$name/bin/python" -m pip install -q -U pip==24.0 wheel
  "$HOSTS/venv-$name/bin/python" -m pip install "$@" -r "$req"
}

for host in "${targets[@]}"; do
  case $host in
  a1111)
    # AUTOMATIC1111 1.10.1 (a mirror fork; upstream's tag v1.10.1 is the same tree) and the repositories that
    # modules/launch_utils.py: prepare_environment pins
    w=$HOSTS/a1111
    clone chirag127/stable-diffusion-webui "$w" 82a973c0
    mkdir -p "$w/repositories"
    clone AUTOMATIC1111/stable-diffusion-webui-assets "$w/repositories/stable-diffusion-webui-assets" 6f7db241d2f8ba7457bac5ca9753331f0c266917
    clone Stability-AI/stablediffusion "$w/repositories/stable-diffusion-stability-ai" cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
    clone Stability-AI/generative-models "$w/repositories/generative-models" 45c443b316737a4ab6e40413d7794a7f5657c19f
    clone crowsonkb/k-diffusion "$w/repositories/k-diffusion" ab527a9a6d347f364e3d185ba6d714e22d80cb3c
    clone salesforce/BLIP "$w/repositories/BLIP" 48211a1594f1321b00f14c9f7a5b4813144b2fb9
    venv a1111 "$w/requirements_versions.txt" torch==2.1.2 torchvision==0.16.2
    # k_diffusion/evaluation.py imports `clip`; the registry's openai-clip is that module
    "$HOSTS/venv-a1111/bin/python" -m pip install -q --no-deps openai-clip
    ;;
  forge)
    w=$HOSTS/forge
    clone lllyasviel/stable-diffusion-webui-forge "$w" dfdcbab6
    mkdir -p "$w/repositories"
    clone AUTOMATIC1111/stable-diffusion-webui-assets "$w/repositories/stable-diffusion-webui-assets" 6f7db241d2f8ba7457bac5ca9753331f0c266917
    clone lllyasviel/huggingface_guess "$w/repositories/huggingface_guess" 84826248b49bb7ca754c73293299c4d4e23a548d
    clone salesforce/BLIP "$w/repositories/BLIP" 48211a1594f1321b00f14c9f7a5b4813144b2fb9
    venv forge "$w/requirements_versions.txt" torch==2.3.1 torchvision==0.18.1
    # Forge's soft-inpainting built-in needs joblib, which its requirements leave out
    "$HOSTS/venv-forge/bin/python" -m pip install -q joblib
    ;;
  reforge)
    # reForge (Panchovix/stable-diffusion-webui-reForge, main, 2026-03): A1111's layout (gradio 3.41, ldm configs)
    # with Forge-style model management (ldm_patched); its launcher pins a re-hosted stablediffusion repository
    # (joypaul162/Stability-AI-stablediffusion f16630a9); Stability-AI's own cf1d67a6 is used in its place
    w=$HOSTS/reforge
    clone Panchovix/stable-diffusion-webui-reForge "$w" 3b56b268
    mkdir -p "$w/repositories"
    clone AUTOMATIC1111/stable-diffusion-webui-assets "$w/repositories/stable-diffusion-webui-assets" 6f7db241d2f8ba7457bac5ca9753331f0c266917
    clone Stability-AI/stablediffusion "$w/repositories/stable-diffusion-stability-ai" cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf
    clone Stability-AI/generative-models "$w/repositories/generative-models" 45c443b316737a4ab6e40413d7794a7f5657c19f
    clone crowsonkb/k-diffusion "$w/repositories/k-diffusion" ab527a9a6d347f364e3d185ba6d714e22d80cb3c
    clone salesforce/BLIP "$w/repositories/BLIP" 48211a1594f1321b00f14c9f7a5b4813144b2fb9
    # its requirements name a pydantic 1.10.15 wheel on GitHub releases: the registry's 1.10.15 instead
    sed 's#^https://github.com/Panchovix/pydantic-fixreforge.*#pydantic==1.10.15#' "$w/requirements_versions.txt" \
      >"$HOSTS/reforge-requirements.txt"
    venv reforge "$HOSTS/reforge-requirements.txt" torch==2.9.0 torchvision
    "$HOSTS/venv-reforge/bin/python" -m pip install -q --no-deps openai-clip
    ;;
  *)
    echo "unknown host $host (a1111, forge or reforge)" >&2
    exit 2
    ;;
  esac
done

# the page checks: Debian's Chromium (Playwright's own browser download is never used)
if [[ ! -x /usr/bin/chromium ]] && command -v apt-get >/dev/null && [[ $(id -u) = 0 ]]; then
  apt-get install -y chromium >/dev/null
fi
echo "done: $(ls -d "$HOSTS"/venv-* "$HOSTS"/a1111 "$HOSTS"/forge 2>/dev/null | tr '\n' ' ')"

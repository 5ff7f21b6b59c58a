#!/usr/bin/env bash
# Create .venv with altclip installed (CPU PyTorch 2.13.0) with the demo and serve extras. `--test` installs
# the test extra instead (pytest, transformers as the reference implementation, ruff, scikit-image, emoji,
# the ONNX exporter and runtime, the server's stack, httpx and Playwright; clip-retrieval without its dependencies).
# System packages, where this machine lets us (root or password-less sudo, apt): the Noto Color Emoji font the
# demo draws with; with --test also Chromium and the Noto CJK fonts, for the browser tests of the search page.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {  # best effort: say what is missing instead of failing the set-up
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else return 1; fi
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$@" >/dev/null 2>&1; }
}

if [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ]; then
  apt_install fonts-noto-color-emoji \
    || echo "setup: the demo needs the Noto Color Emoji font: install fonts-noto-color-emoji (Debian/Ubuntu)," \
            "google-noto-emoji-color-fonts (Fedora) or noto-fonts-emoji (Arch), or pass --font to altclip demo" >&2
fi
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium fonts-noto-cjk \
    || echo "setup: the browser tests need Chromium (apt-get install chromium fonts-noto-cjk); they skip without it" >&2
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned: on these machines torch==2.13.0 is a CPU wheel on local disk; an unpinned torch pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
  # clip-retrieval's ClipClient and built front end, which the server's tests speak to; without its
  # dependencies, which pin NumPy < 2 and would take torch's place
  .venv/bin/python -m pip install -q --no-deps "clip-retrieval==2.45.0"
else
  .venv/bin/python -m pip install -q -e ".[demo,serve]"
fi

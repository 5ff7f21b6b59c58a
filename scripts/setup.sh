#!/usr/bin/env bash
# Create .venv with altclip installed (CPU PyTorch 2.13.0). `--test` adds the test extra
# (pytest, transformers as the reference implementation, ruff, scikit-image, emoji, and the ONNX
# exporter and runtime).
# Also installs the Noto Color Emoji font the demo draws with, where this machine lets us.
set -euo pipefail
cd "$(dirname "$0")/.."

FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
if [ ! -f "$FONT" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1; } \
      || echo "setup: could not install fonts-noto-color-emoji; the demo needs it (see README)" >&2
  elif command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get install -y -q fonts-noto-color-emoji >/dev/null 2>&1 \
      || echo "setup: could not install fonts-noto-color-emoji; the demo needs it (see README)" >&2
  else
    echo "setup: the demo needs the Noto Color Emoji font: install fonts-noto-color-emoji (Debian/Ubuntu)," \
         "google-noto-emoji-color-fonts (Fedora) or noto-fonts-emoji (Arch), or pass --font to altclip demo" >&2
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned: on these machines torch==2.13.0 is a CPU wheel on local disk; an unpinned torch pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e ".[demo]"
fi

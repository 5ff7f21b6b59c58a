#!/usr/bin/env bash
# Create .venv with altclip installed (CPU PyTorch 2.13.0). `--test` adds the test extra
# (pytest, transformers as the reference implementation, sentencepiece, ruff).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Pinned: on these machines torch==2.13.0 is a CPU wheel on local disk; an unpinned torch pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi

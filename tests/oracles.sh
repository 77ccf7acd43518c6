#!/usr/bin/env bash
# The oracle venvs the tests run in subprocesses (tests only; README "Set up", docs/testing.md). Each family's
# reference transformers needs a venv of its own: Qwen2.5-VL's 4.51.3 is in the main venv (requirements-test.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
# Qwen3-VL: transformers 4.57.6, qwen-vl-utils 0.0.14, torch 2.14.1 + torchvision 0.29.1
python3 -m venv .venv-oracle3
.venv-oracle3/bin/pip install -q -r requirements-oracle3.txt
# Qwen3.5: transformers 5.23.0 in a --target folder, layered on .venv-oracle3's torch by a .pth (no second torch)
python3 -m venv .venv-oracle35
.venv-oracle35/bin/pip install -q --no-deps --target .venv-oracle35/tf5 -r requirements-oracle35.txt
printf '%s\n' ../../../tf5 ../../../../.venv-oracle3/lib/python3.11/site-packages \
    > .venv-oracle35/lib/python3.11/site-packages/oracle35.pth

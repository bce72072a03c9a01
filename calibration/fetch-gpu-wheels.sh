#!/usr/bin/env bash
# Here (with the registries): download the wheels the GPU machine lacks into .whl/ (git-ignored; name it in `carry`).
# The lent H200 runs Python 3.12 with torch, transformers, peft and accelerate, but no bitsandbytes, pydantic or
# pydantic-settings. Versions follow this checkout's .venv so the measured stack matches the estimator's.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
pin() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in bitsandbytes pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg==$(pin "$pkg")"
done
ls -la .whl

#!/usr/bin/env bash
# Wheels the GPU machine's image lacks for bench/gpu_suite.py, fetched here
# into .whl/ (ignored by git), for the device tool's `carry=[".whl"]`.
#   diffusers: the infer section's baseline (its needs are on the image;
#     importlib_metadata is only imported on Python < 3.8);
#   av (PyAV): imported by kiwi_jax.pipeline (video reading).
# About 42 MB; the carried tree's limit is 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 av==18.1.0
ls -l .whl

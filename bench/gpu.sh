#!/usr/bin/env bash
# GPU benchmark: the same report on CUDA at batch 32 (installs nothing; prints the table last).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python bench/report.py --device cuda --batches 32 --rounds 10 --models vgg16 resnet50 --out bench/RESULTS-gpu.md

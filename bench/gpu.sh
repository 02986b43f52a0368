#!/usr/bin/env bash
# GPU run (installs nothing): correctness on CUDA against the CPU first (bitsandbytes 4-bit too, where it imports),
# then the CNN report at batch 32 and the transformer benchmark on CUDA; the tables are printed last.
# Budget: about 8 minutes on an H100.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python -m bench.gpu_check
python -m bench.report --device cuda --batches 32 --rounds 10 --models vgg16 resnet50 --out bench/RESULTS-gpu.md
python -m bench.transformer --device cuda --batch 8 --rounds 10 --out bench/RESULTS_transformer-gpu.md
# long contexts at the issue's size: a 0.5B LLaMA shape, 8192 tokens, bfloat16 (a few minutes)
python -m bench.long_context --device cuda --layers 24 --hidden 1024 --heads 16 --intermediate 4096 --seqs 8192 \
  --dtype bfloat16 --rounds 2 > bench/RESULTS_long_context-gpu.md
cat bench/RESULTS-gpu.md bench/RESULTS_transformer-gpu.md bench/RESULTS_long_context-gpu.md

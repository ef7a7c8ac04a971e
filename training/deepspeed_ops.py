"""Where DeepSpeed's JIT-compiled CPU ops live, and building them ahead of time.

On CPU, DeepSpeed compiles its shared-memory all-reduce op (`deepspeed_shm_comm`) the
first time a process group starts: ~50 s on 2 cores. torch keys that build cache on the
compiler command line, which contains the venv's path, so two checkouts sharing
`~/.cache/torch_extensions` rebuild over each other on every run. Keeping the cache inside
the interpreter's prefix makes it per-venv and lets `scripts/install.sh` build it once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def extensions_dir() -> Path:
    return Path(sys.prefix) / "torch_extensions"


def use_prefix_extensions_dir() -> str:
    """Point torch's extension cache at this interpreter's prefix unless the user chose one."""
    return os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))


def prebuild_cpu_ops() -> bool:
    """Compile the ops a CPU DeepSpeed run needs; False where this DeepSpeed has none."""
    use_prefix_extensions_dir()
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        return False
    builder.load(verbose=False)
    return True

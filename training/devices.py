"""Which device and how many threads a process may use: what Ray assigned, nothing more.

On a GPU node every process sees every GPU (`torch.cuda.is_available()` is true in a
Ray Data actor that asked for none), and `os.cpu_count()` counts the node's cores, not
the worker's share. Taking either would put two workers on one GPU (or a classifier on
the GPU a vLLM replica sized its KV cache for) and oversubscribe the CPUs. So devices
and threads come from the Ray assignment: `ray.get_gpu_ids()` and the runtime context's
assigned resources. The decisions are pure functions of that assignment (testable on a
CPU machine with any assignment); the `assigned_*` wrappers read it from Ray, with
fallbacks for processes outside a Ray worker:

- a Ray worker (task or actor): exactly its assignment;
- the Ray driver: CPU only — Ray gives the driver no GPU, so one used there is taken from
  an actor Ray handed it to — and all the CPUs the process may run on;
- no Ray at all (a notebook, a unit test): the GPU if torch sees one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)

# Ray leaves CUDA_VISIBLE_DEVICES alone when this is set; GPU ids are then node indices.
_RAY_NOSET_CUDA = "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"


# ----------------------------------------------------------------------- pure decisions


def device_for(
    gpu_ids: Sequence[Any], *, cuda_available: bool = True, ray_sets_visible: bool = True
) -> str:
    """The torch device for a process Ray assigned `gpu_ids` to.

    No GPU assigned → "cpu", whatever the node has. One assigned → "cuda": Ray narrows
    CUDA_VISIBLE_DEVICES to the assignment, so cuda:0 is the assigned GPU; when Ray was
    told not to (`RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`), the id is a node index
    and the device names it. Assigned but torch cannot see CUDA (a CPU torch on a GPU
    node) → "cpu", with a warning, rather than failing every forward.
    """
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        log.warning("Ray assigned GPU(s) %s but torch sees no CUDA device: using the CPU", gpu_ids)
        return "cpu"
    return "cuda" if ray_sets_visible else f"cuda:{int(gpu_ids[0])}"


def threads_for_cpus(assigned_cpus: float | None, available: int) -> int:
    """Intra-op threads for a worker with `assigned_cpus` (None: not a Ray worker).

    The assignment, rounded down (at least 1: an actor with num_cpus=0.5 or 0 still
    runs one thread), never more than the cores the process may run on. Outside a Ray
    worker, every core the process may run on.
    """
    available = max(1, int(available))
    if assigned_cpus is None:
        return available
    return max(1, min(available, math.floor(float(assigned_cpus))))


def deepspeed_accelerator_name(assigned_gpu_ids: Sequence[Any]) -> str:
    """ "cuda" for a worker with a GPU assignment, else "cpu" (DeepSpeed itself picks CUDA
    whenever the node has a GPU, including for the workers that were given none)."""
    return "cuda" if assigned_gpu_ids else "cpu"


def bf16_supported(device: str, capability: tuple[int, int] | None = None) -> bool:
    """Whether bf16 training is worth enabling on `device`.

    CUDA from compute capability 8.0 (Ampere: A10G, A100, H100) has bf16 tensor cores;
    older GPUs emulate it slowly, and on CPU (gloo) the loop trains in fp32. Pass the
    capability to decide without a GPU; None reads it from torch for a CUDA device.
    """
    if not str(device).startswith("cuda"):
        return False
    if capability is None:
        import torch

        if not torch.cuda.is_available():
            return False
        capability = tuple(torch.cuda.get_device_capability())  # type: ignore[assignment]
    return tuple(capability) >= (8, 0)


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    """Whether this node's CPU computes bf16 matmuls in hardware (avx512_bf16 or AMX).

    Without them bf16 autocast is emulated and slower than fp32. `flags` (as in
    /proc/cpuinfo) decide without reading the machine; None reads this node's.
    """
    if flags is None:
        try:
            with open("/proc/cpuinfo") as f:
                line = next((x for x in f if x.startswith("flags")), "")
        except OSError:
            return False
        flags = set(line.partition(":")[2].split())
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def training_precision(
    precision: str,
    device: str,
    capability: tuple[int, int] | None = None,
    cpu_flags: set[str] | None = None,
) -> str:
    """What a `precision` setting ("auto" | "bf16-native" | "bf16" | "fp32") means on
    `device`.

    "bf16": DeepSpeed's bf16 mode (bf16 weights and matmuls) on a CUDA device;
    "bf16-autocast": torch autocast around the forward pass on CPU (fp32 weights,
    optimizer and losses; DeepSpeed's bf16 mode is GPU-only); "fp32": neither. "auto" is
    bf16 only where `bf16_supported` says the GPU has bf16 tensor cores: on CPU the gain
    depends on bf16 instructions and on where a job's time goes, so it is measured, not
    assumed, and the recipes whose tables were made in fp32 keep reproducing them.
    "bf16-native" is bf16 wherever the hardware has it (Ampere+ GPUs; CPUs with
    avx512_bf16 or AMX), else fp32: what a recipe sets once a measurement showed bf16
    pays off for it (`cqa-explain.yaml`), without slowing a CPU that would emulate it.
    Each worker decides for its own node, so a cluster should not mix CPU generations.
    """
    if precision == "fp32":
        return "fp32"
    on_gpu = str(device).startswith("cuda")
    if precision == "bf16":
        return "bf16" if on_gpu else "bf16-autocast"
    if precision == "auto":
        return "bf16" if bf16_supported(device, capability) else "fp32"
    if precision == "bf16-native":
        if on_gpu:
            return "bf16" if bf16_supported(device, capability) else "fp32"
        return "bf16-autocast" if cpu_has_native_bf16(cpu_flags) else "fp32"
    raise ValueError(f"precision: one of auto, bf16-native, bf16, fp32; got {precision!r}")


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the node's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------ reading Ray's answer


def _ray_mode() -> str:
    """ "worker" inside a Ray task/actor, "driver" in a connected driver, else "none"."""
    import sys

    if "ray" not in sys.modules:  # never imported: certainly not a Ray worker
        return "none"
    import ray

    if not ray.is_initialized():
        return "none"
    return "worker" if ray._private.worker.global_worker.mode == ray.WORKER_MODE else "driver"


def assigned_gpu_ids() -> list[Any]:
    """GPU ids Ray assigned to this worker ([] in a driver or outside Ray)."""
    if _ray_mode() != "worker":
        return []
    import ray

    return list(ray.get_gpu_ids())


def assigned_cpus() -> float | None:
    """CPUs Ray assigned to this worker (0.0 for an actor that asked for none); None in a
    driver or outside Ray."""
    if _ray_mode() != "worker":
        return None
    import ray

    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0))


def assigned_device() -> str:
    """The torch device this process may use (see the module docstring)."""
    import torch

    mode = _ray_mode()
    if mode == "none":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if mode == "driver":
        return "cpu"
    return device_for(
        assigned_gpu_ids(),
        cuda_available=torch.cuda.is_available(),
        ray_sets_visible=os.environ.get(_RAY_NOSET_CUDA, "") in ("", "0"),
    )


def threads_for_assigned_cpus() -> int:
    """Intra-op threads for this process: its Ray CPU assignment, else its cores."""
    return threads_for_cpus(assigned_cpus(), available_cpus())


def use_assigned_cpu_threads() -> int | None:
    """In a Ray worker, run torch on as many threads as CPUs Ray assigned it; returns the
    count (None outside a worker: nothing is changed).

    Ray sets OMP_NUM_THREADS to an actor's CPUs only when the variable is unset, and a
    cluster image that exports OMP_NUM_THREADS=1 would pin a 4-CPU teacher stage to one
    thread; setting it from the assignment makes `teacher.num_cpus` mean what it says.
    """
    if _ray_mode() != "worker":
        return None
    import torch

    n = threads_for_assigned_cpus()
    torch.set_num_threads(n)
    return n


def resolve_device(device: str | None) -> str:
    """`device` when given, else `assigned_device()`: what model wrappers call."""
    return device or assigned_device()


def use_deepspeed_accelerator(name: str) -> None:
    """Make DeepSpeed use `name` ("cpu" | "cuda") in this process, before or after its
    first `get_accelerator()` call (DS_ACCELERATOR only counts before)."""
    os.environ["DS_ACCELERATOR"] = name
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if get_accelerator().device_name() == name:
        return
    if name == "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())
    elif name == "cuda":
        from deepspeed.accelerator.cuda_accelerator import CUDA_Accelerator

        set_accelerator(CUDA_Accelerator())
    else:
        raise ValueError(f"accelerator must be 'cpu' or 'cuda', got {name!r}")


def describe_assignment() -> dict[str, Any]:
    """What this process was given and what it uses: for logs and run reports."""
    return {
        "gpu_ids": [str(g) for g in assigned_gpu_ids()],
        "cpus": assigned_cpus(),
        "device": assigned_device(),
        "threads": threads_for_assigned_cpus(),
    }

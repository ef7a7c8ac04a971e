"""Device/thread decisions from a Ray assignment, checked for assignments this CPU machine
cannot have (GPU ids, CPU-torch on a GPU node, NOSET_CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import pytest

from raydistill.serving.hf_chat import resolve_device_map
from raydistill.training.devices import (
    available_cpus,
    bf16_supported,
    deepspeed_accelerator_name,
    describe_assignment,
    device_for,
    resolve_device,
    threads_for_cpus,
    training_precision,
)


def test_no_gpu_assigned_means_cpu_even_when_the_node_has_one():
    assert device_for([], cuda_available=True) == "cpu"


def test_one_assigned_gpu_is_cuda_zero_when_ray_narrows_visibility():
    assert device_for(["3"], cuda_available=True, ray_sets_visible=True) == "cuda"


def test_noset_visible_devices_names_the_node_index():
    assert device_for(["3"], cuda_available=True, ray_sets_visible=False) == "cuda:3"


def test_gpu_assigned_to_a_cpu_torch_falls_back_to_cpu():
    assert device_for([0], cuda_available=False) == "cpu"


@pytest.mark.parametrize(
    ("assigned", "available", "want"),
    [(None, 16, 16), (4.0, 16, 4), (2.5, 16, 2), (0.5, 16, 1), (0.0, 16, 1), (32, 8, 8)],
)
def test_threads_follow_the_assignment_within_the_cores(assigned, available, want):
    assert threads_for_cpus(assigned, available) == want


def test_deepspeed_accelerator_follows_the_gpu_assignment_not_the_node():
    assert deepspeed_accelerator_name([]) == "cpu"
    assert deepspeed_accelerator_name(["0"]) == "cuda"


@pytest.mark.parametrize(
    ("device", "cap", "want"),
    [
        ("cpu", (9, 0), False),
        ("cuda", (7, 5), False),
        ("cuda", (8, 0), True),
        ("cuda:1", (9, 0), True),
    ],
)
def test_bf16_needs_ampere_or_newer(device, cap, want):
    assert bf16_supported(device, cap) is want


@pytest.mark.parametrize(
    ("precision", "device", "cap", "want"),
    [
        ("auto", "cpu", None, "fp32"),  # measured, not assumed: CPU bf16 is opt-in
        ("auto", "cuda", (8, 0), "bf16"),
        ("auto", "cuda", (7, 5), "fp32"),
        ("bf16", "cpu", None, "bf16-autocast"),  # DeepSpeed's bf16 mode is GPU-only
        ("bf16", "cuda", (8, 0), "bf16"),
        ("fp32", "cuda", (9, 0), "fp32"),
    ],
)
def test_training_precision_per_device(precision, device, cap, want):
    assert training_precision(precision, device, cap) == want
    with pytest.raises(ValueError, match="'fp8'"):
        training_precision("fp8", device, cap)


BF16_CPU = {"avx512f", "avx512_bf16"}
PLAIN_CPU = {"avx2", "avx512f"}


@pytest.mark.parametrize(
    ("device", "cap", "flags", "want"),
    [
        ("cpu", None, BF16_CPU, "bf16-autocast"),
        ("cpu", None, {"avx2", "amx_bf16", "amx_tile"}, "bf16-autocast"),
        ("cpu", None, PLAIN_CPU, "fp32"),  # would emulate bf16: slower than fp32
        ("cuda", (8, 0), PLAIN_CPU, "bf16"),  # the GPU decides on a GPU worker
        ("cuda", (7, 0), BF16_CPU, "fp32"),
    ],
)
def test_bf16_native_is_bf16_only_where_the_hardware_has_it(device, cap, flags, want):
    assert training_precision("bf16-native", device, cap, flags) == want


def test_cpu_flags_are_read_from_cpuinfo_when_not_given():
    from pathlib import Path

    from raydistill.training.devices import cpu_has_native_bf16

    line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    flags = set(line.split(":", 1)[1].split())
    assert cpu_has_native_bf16() is bool({"avx512_bf16", "amx_bf16"} & flags)
    assert cpu_has_native_bf16(set()) is False


def test_outside_ray_this_machine_uses_its_cpu_and_all_its_cores():
    assert resolve_device(None) == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
    got = describe_assignment()
    assert got["gpu_ids"] == [] and got["cpus"] is None
    assert got["threads"] == available_cpus() >= 1


def test_hf_device_map_shards_only_over_several_gpus():
    assert resolve_device_map(None, 0) is None
    assert resolve_device_map(None, 1) is None
    assert resolve_device_map(None, 2) == "auto"
    assert resolve_device_map("balanced", 1) == "balanced"
    with pytest.raises(ValueError, match="pool.device_map='auto' needs pool.num_gpus"):
        resolve_device_map("auto", 0)


def test_serve_cli_takes_gpus_and_replicas_per_replica():
    from raydistill.cluster.cli import build_parser

    args = build_parser().parse_args(["serve", "m=/ckpt", "--num-gpus", "1", "--replicas", "2"])
    assert (args.num_gpus, args.num_cpus, args.replicas, args.max_replicas) == (1.0, 1.0, 2, None)


def test_a_teacher_actor_runs_as_many_threads_as_cpus_ray_gave_it(ray_session):
    """teacher.num_cpus is the thread count of the teacher's Ray Data actors, even where
    the cluster image exports OMP_NUM_THREADS=1 (Ray then leaves the variable alone, and a
    2-CPU actor would run one thread)."""
    ray = ray_session

    @ray.remote
    def threads_of_a_classifier():
        import torch

        from raydistill.registry import resolve_model
        from raydistill.training.classifier import Classifier

        Classifier(resolve_model("tiny-bert"))
        return torch.get_num_threads()

    def run(cpus: int) -> int:
        pinned = {"env_vars": {"OMP_NUM_THREADS": "1"}}
        return ray.get(threads_of_a_classifier.options(runtime_env=pinned, num_cpus=cpus).remote())

    assert run(2) == min(2, available_cpus())
    assert run(1) == 1

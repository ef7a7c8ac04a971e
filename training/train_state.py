"""Mid-job checkpoints: what a killed Ray Train worker group needs to resume a job.

A fit trains a list of jobs; a finished job is already durable (its student checkpoint).
What a worker failure can lose is the job in flight. A long job (the teacher, a large-k
student) therefore reports a *partial* checkpoint every `checkpoint_every` epochs, and a
restarted worker group continues from the latest one instead of from step 0: the restart
then costs at most `checkpoint_every` epochs of steps, not the job.

A partial checkpoint is the whole training state, so the resumed job takes the same steps
the uninterrupted one would have taken:

- rank 0: the trained weights, the best-so-far weights (dev selection), the optimizer
  state (plain torch optimizer, i.e. ZeRO stage 0; under ZeRO 1-3 each rank holds a
  partition and the resumed job restarts the optimizer moments: reported as
  `optimizer_restored: false`), and the loop's counters and history;
- every rank: its torch RNG state (dropout), its numpy generator state (shards and batch
  order) and its current batch permutation — Ray Train merges all ranks' files into one
  checkpoint folder.

Everything is safetensors or JSON: nothing here unpickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

STATE = "raydistill_state.json"


@dataclass
class LoopState:
    """The counters of a job's loop at a checkpoint step."""

    step: int
    best_score: float
    best_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    step_s: float = 0.0
    elapsed_s: float = 0.0
    optimizer_saved: bool = False


@dataclass
class Restored:
    """A partial checkpoint read back for one rank."""

    state: LoopState
    best: dict[str, torch.Tensor] | None
    perm: torch.Tensor | None
    optimizer_restored: bool


def checkpoint_steps(every_epochs: float, steps_per_epoch: int, total_steps: int) -> int:
    """Steps between partial checkpoints; 0 = none (the job is its own unit of work)."""
    if not every_epochs or every_epochs <= 0:
        return 0
    n = max(1, int(round(every_epochs * steps_per_epoch)))
    return n if n < total_steps else 0


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Independent contiguous copies: safetensors refuses tensors that share storage (tied
    # embeddings), and the live weights keep changing after the save.
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def plain_optimizer(optimizer: Any, zero_stage: int) -> torch.optim.Optimizer | None:
    """The optimizer whose state this module can save, or None (ZeRO-partitioned)."""
    if zero_stage == 0 and isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    return None


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}/{k}"] = v.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, _, name = key.partition("/")
        state.setdefault(int(pid), {})[name] = v
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_partial(
    ckpt_dir: str,
    rank: int,
    *,
    weights: dict[str, torch.Tensor] | None,
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    state: LoopState,
    rng_state: dict[str, Any],
    perm: torch.Tensor | None,
) -> None:
    """Write this rank's part of a partial checkpoint into `ckpt_dir`."""
    from safetensors.torch import save_file

    own: dict[str, torch.Tensor] = {"torch_rng": torch.get_rng_state()}
    if perm is not None:
        own["perm"] = perm.detach().cpu().clone().contiguous()
    save_file(own, os.path.join(ckpt_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(ckpt_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"numpy_rng": rng_state}, f)
    if rank != 0:
        return
    assert weights is not None, "rank 0 saves the weights"
    save_file(_cpu(weights), os.path.join(ckpt_dir, "weights.safetensors"))
    if best is not None:
        save_file(_cpu(best), os.path.join(ckpt_dir, "best.safetensors"))
    state.optimizer_saved = optimizer is not None
    if optimizer is not None:
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, os.path.join(ckpt_dir, "optimizer.safetensors"))
        with open(os.path.join(ckpt_dir, "optimizer.json"), "w") as f:
            json.dump(meta, f)
    with open(os.path.join(ckpt_dir, STATE), "w") as f:
        json.dump(asdict(state), f)


def load_partial(
    ckpt_dir: str,
    rank: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    rng: Any,
) -> Restored:
    """Load a partial checkpoint into `model` (before DeepSpeed wraps it), `optimizer`
    and `rng` (a numpy Generator); set this rank's torch RNG. Every rank reads the rank-0
    weights, so all ranks start the resumed job identical, as they were."""
    from safetensors.torch import load_file

    with open(os.path.join(ckpt_dir, STATE)) as f:
        state = LoopState(**json.load(f))
    model.load_state_dict(load_file(os.path.join(ckpt_dir, "weights.safetensors")))
    best_path = os.path.join(ckpt_dir, "best.safetensors")
    best = load_file(best_path) if os.path.exists(best_path) else None
    restored_opt = False
    if optimizer is not None and state.optimizer_saved:
        with open(os.path.join(ckpt_dir, "optimizer.json")) as f:
            meta = json.load(f)
        _load_optimizer(optimizer, load_file(os.path.join(ckpt_dir, "optimizer.safetensors")), meta)
        restored_opt = True
    own_path = os.path.join(ckpt_dir, f"rank{rank}.safetensors")
    perm = None
    if os.path.exists(own_path):  # the same world size resumed: this rank's own streams
        own = load_file(own_path)
        torch.set_rng_state(own["torch_rng"])
        perm = own.get("perm")
        with open(os.path.join(ckpt_dir, f"rank{rank}.json")) as f:
            rng.bit_generator.state = json.load(f)["numpy_rng"]
    return Restored(state=state, best=best, perm=perm, optimizer_restored=restored_opt)


class JobCheckpoints:
    """The partial-checkpoint hooks of one job, as the training loop calls them.

    `report_partial(step, ckpt_dir)` hands a written folder to Ray Train (every rank calls
    it at the same step: `ray.train.report` is a barrier). `resume_dir` is the partial
    checkpoint this job restarts from, or None.
    """

    def __init__(
        self,
        every_epochs: float,
        rank: int,
        zero_stage: int,
        report_partial=None,
        resume_dir: str | None = None,
    ):
        self.every_epochs = every_epochs if report_partial is not None else 0.0
        self.rank = rank
        self.zero_stage = zero_stage
        self.report_partial = report_partial
        self.resume_dir = resume_dir
        self.every = 0
        self.optimizer: torch.optim.Optimizer | None = None

    def start(
        self, steps_per_epoch: int, total_steps: int, model, optimizer, rng
    ) -> Restored | None:
        """Before `deepspeed.initialize`: set the cadence; load the resume state, if any."""
        self.every = checkpoint_steps(self.every_epochs, steps_per_epoch, total_steps)
        self.optimizer = plain_optimizer(optimizer, self.zero_stage)
        if self.resume_dir is None:
            return None
        return load_partial(
            self.resume_dir, self.rank, model=model, optimizer=self.optimizer, rng=rng
        )

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, live, best, state: LoopState, rng, perm) -> None:
        import tempfile

        d = tempfile.mkdtemp(prefix="rd-partial-")
        save_partial(
            d,
            self.rank,
            weights=live.state_dict() if self.rank == 0 else None,
            best=best,
            optimizer=self.optimizer,
            state=state,
            rng_state=rng.bit_generator.state,
            perm=perm,
        )
        self.report_partial(step, d)

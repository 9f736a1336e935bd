"""Several processes training one model (`accelerate launch` / `torchrun`: DDP), seen from the OOF runner
and the models: which process is the main one, which device a process trains on, and a barrier.

Every process trains every fold (DDP needs all of them inside the training loop) and predicts its share of
the rows (ensemble.nn.inference: rank_share, gather_rows); only the main process (global rank 0) touches the
artifacts: it removes, saves and renames fold folders and writes the OOF and test files, and it alone decides
whether kept work is reused (from_main, kept_on_main). Without `WORLD_SIZE > 1` all of this is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: How long a process waits at a meeting point: rank 0 saving a fold, a slower process finishing its share of a
#: test file, which at Kaggle scale can outlast torch's default (10 min for NCCL). ENSEMBLE_DDP_TIMEOUT_S
#: overrides it.
TIMEOUT_S = int(os.environ.get("ENSEMBLE_DDP_TIMEOUT_S", str(6 * 3600)))


def process_group_kwargs() -> dict:
    from datetime import timedelta

    return {"timeout": timedelta(seconds=TIMEOUT_S)}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def _group():
    """The process group, initialised through Accelerate's PartialState when no training loop has done it
    yet (gloo on CPU, nccl on CUDA)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), **process_group_kwargs())
    return dist


def from_main(value):
    """Rank 0's `value` on every process (also a meeting point); `value` itself in one process. Only rank 0
    reads the artifacts, so processes on machines without a shared disk still agree."""
    if not is_distributed():
        return value
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value) -> list:
    """Every process's `value`, in rank order, on every process; [value] in one process."""
    if not is_distributed():
        return [value]
    out: list = [None] * world_size()
    _group().all_gather_object(out, value)
    return out


def kept_on_main(read: Callable[[], T | None], compute: Callable[[], T], write: Callable[[T], None]) -> T:
    """A result kept on disk, reused or computed as rank 0 decides: rank 0's `read()` (None: nothing kept, or
    stale) is every process's answer, so all processes skip the work or all do it (the work may be shared among
    them, e.g. sharded predictions, and a process left alone in a collective would hang); `write` on rank 0."""
    kept = from_main(read() if is_main() else None)
    if kept is not None:
        return kept
    value = compute()
    if is_main():
        write(value)
    return value


def barrier(reason: str = "") -> None:
    """All processes meet here (no-op in one process)."""
    if not is_distributed():
        return
    dist = _group()
    if not is_main() and reason:
        print(f"[rank {rank()}] waiting for rank 0: {reason}", flush=True)
    dist.barrier()


def finish(reason: str = "") -> None:
    """The last meeting point of a run: all processes meet, then each tears its process group down before the
    interpreter exits. Left to interpreter shutdown, gloo's background threads can outlive the group and abort
    the process ("terminate called without an active exception", exit -6) after the work is done."""
    if not is_distributed():
        return
    barrier(reason)
    import torch.distributed as torch_dist

    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def train_device(configured: Sequence[torch.device], listed: bool = True) -> torch.device | None:
    """The device this process trains on under DDP (None in one process: the model's own choice).

    Accelerate gives process i the GPU cuda:<LOCAL_RANK> (pick the GPUs with CUDA_VISIBLE_DEVICES or
    `accelerate launch --gpu_ids`); a model configured for the CPU, or a machine without CUDA, trains on
    the CPU (gloo). With `listed`, a configured CUDA list that does not hold this process's GPU is an error, not a
    silent move to another GPU."""
    if not is_distributed():
        return None
    import torch

    if not torch.cuda.is_available() or all(d.type == "cpu" for d in configured):
        return torch.device("cpu")
    mine = torch.device("cuda", local_rank())
    cuda = [torch.device("cuda", d.index or 0) for d in configured if d.type == "cuda"]
    if listed and cuda and mine not in cuda:
        from ensemble.core.config import ConfigError

        raise ConfigError(f"under accelerate launch process {local_rank()} trains on {mine}, which the model's "
                          f"devices {[str(d) for d in configured]} do not list; list every launched GPU "
                          f"(e.g. [cuda:0, cuda:1]) or choose them with CUDA_VISIBLE_DEVICES")
    return mine


def relaunch(name: str, argv: list[str]) -> None:
    """`ENSEMBLE_LAUNCH_<NAME>="accelerate launch --multi_gpu --num_processes 2" dvc repro <name>`: the stage
    command in dvc.yaml stays `python stages/oof.py <name>` (so dvc.lock is right), and this replaces the
    process with the launcher running the same script and arguments, once."""
    launcher = os.environ.get(f"ENSEMBLE_LAUNCH_{name.upper()}")
    if not launcher or is_distributed() or os.environ.get("ENSEMBLE_LAUNCHED"):
        return
    import shlex
    import sys

    cmd = [*shlex.split(launcher), *argv]
    os.environ["ENSEMBLE_LAUNCHED"] = "1"
    print(f"[{name}] relaunching: {shlex.join(cmd)}", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(cmd[0], cmd)

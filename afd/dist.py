"""Several processes (``torchrun``, ``accelerate launch``): who writes, who waits, what is summed.

Under a launcher every process runs the same stage function. ``transformers.Trainer`` shards
the training data and averages gradients; afd adds what is around it:

- only the main process (rank 0) writes a stage's files (``config.yaml``, ``metrics.json``,
  models, plots, pools) and prints; the others wait for it at barriers, so every rank sees a
  finished file before it reads it;
- a decision that one process makes (reuse a finished stage, or stop because its options
  changed) reaches every rank, error included, so that no rank waits for one that stopped;
- metrics are reduced: a mean over ranks (a rank's own training loss), a sum (counts).

The helpers are no-ops in a single process, so the stage code reads the same either way. The
process group is ``torch.distributed``'s (gloo on CPU, NCCL on CUDA), created on first use
unless the launcher or ``accelerate`` already made it; ``Trainer`` then reuses it. Its
timeout (``AFD_DIST_TIMEOUT`` seconds, default 6 hours) bounds how long ranks wait for the
main process while it alone scores or evaluates.
"""

from __future__ import annotations

import atexit
import functools
import os
from datetime import timedelta
from typing import Any, Callable

import torch


def world() -> int:
    """Number of processes of this run (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


_alone = False  # True while the main process runs an ``on_main`` block: no collectives then


def init() -> bool:
    """Join the process group (creating it if needed); False in a single process, and inside
    an ``on_main`` block, where the main process works alone."""
    if world() < 2 or _alone:
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true")
        if cuda:
            torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl" if cuda else "gloo",
                                timeout=timedelta(seconds=int(os.environ.get("AFD_DIST_TIMEOUT", 6 * 3600))))
        atexit.register(_destroy)
    return True


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def finish(code: int) -> int:
    """End this process's part in the process group as the command ends with exit status ``code``.
    A clean end waits for every rank at a barrier before the group is destroyed: a rank that
    destroyed it while another still used it had gloo's threads abort that one ("terminate called
    without an active exception", exit -6) after all its work was written. A failed end exits at
    once, output flushed: its peers may be inside a collective it never reaches, and the launcher
    ends them."""
    import sys

    import torch.distributed as dist

    if world() < 2 or not dist.is_initialized():
        return code
    if code == 0:
        dist.barrier()
        dist.destroy_process_group()
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def barrier() -> None:
    if init():
        torch.distributed.barrier()


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every rank (any picklable object)."""
    if not init():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on the main process; None on the others."""
    if not init():
        return [obj]
    out = [None] * world() if is_main() else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def reduce_sum(x: float | int | None) -> float | int | None:
    """The sum over ranks of a per-rank number (None stays None)."""
    if x is None or not init():
        return x
    values = [None] * world()
    torch.distributed.all_gather_object(values, x)
    return sum(values)


def reduce_mean(x: float | None) -> float | None:
    """The mean over ranks of a per-rank number, e.g. a rank's own training loss."""
    total = reduce_sum(x)
    return total if total is None or world() < 2 else total / world()


def map_sharded(fn: Callable[[list], list], items: list) -> list:
    """``fn(items)`` (one result per item, in order) with the items dealt round-robin to the
    ranks; every rank gets all the results in order."""
    if not init():
        return fn(items)
    parts = [None] * world()
    torch.distributed.all_gather_object(parts, fn(items[rank()::world()]))
    out = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world()] = part
    return out


def on_main(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` run by the main process only, its result (or the exception it
    raised) handed to every rank; the other ranks wait for it. Inside ``fn`` the helpers of
    this module act as in a single process, so ``fn`` may run a whole stage."""
    global _alone
    if not init():
        return fn(*args, **kwargs)
    result, error, failure = None, None, None
    if is_main():
        _alone = True
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # the other ranks raise it too, so none waits for ever
            failure = e
            error = e if _picklable(e) else RuntimeError(f"the main process failed: {e!r}")
        finally:
            _alone = False
    result, error = broadcast((result, error))
    if failure is not None:
        raise failure
    if error is not None:
        raise error
    return result


def _picklable(e: Exception) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return True
    except Exception:
        return False


def main_process_stage(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stage that the main process runs alone (Best-of-N and evaluation, which score pools
    with one model at a time): the other ranks wait for it and return its metrics."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        return on_main(fn, *args, **kwargs)

    return run


def save_trained(trainer, tokenizer, folder, save: Callable[..., None]) -> None:
    """Save a trained model from a call every rank makes: ``save(model, tokenizer, folder)`` on
    the main process. Under FSDP or DeepSpeed, whose weights are sharded across the ranks, the
    full weights are first gathered onto the main process (a collective) and saved with
    ``save_pretrained`` (a LoRA model is then saved as its PEFT adapter, not merged).
    The sharded path has not run yet: FSDP and DeepSpeed are GPU paths (bench/README.md, GPU check)."""
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if not sharded:
        if is_main():
            save(trainer.model, tokenizer, folder)
        return
    acc = trainer.accelerator
    state = acc.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    if is_main():
        acc.unwrap_model(trainer.model).save_pretrained(folder, state_dict=state)
        tokenizer.save_pretrained(folder)
    barrier()


def watch_launcher(interval: float = 1.0) -> bool:
    """Under a launcher, end this worker once the launcher is gone. ``torchrun`` (and
    ``accelerate launch``, which runs it) starts each worker in a session of its own, so a
    ``kill -9`` of the launcher, or of its process group, does not reach the workers, which
    would run on to the end. A daemon thread checks every ``interval`` seconds that the process
    that started this one is still its parent; when it is not, the worker exits at once (what it
    wrote is what a kill leaves: the rerun resumes from it). Returns whether it watches."""
    if "LOCAL_RANK" not in os.environ:
        return False
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(143)  # as a SIGTERM would: 128 + 15

    threading.Thread(target=watch, name="afd-launcher-watch", daemon=True).start()
    return True


def print_main(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs)

"""The ranks of a torchrun job: who this process is, waiting for the others, starting and ending
the process group, and dying with the launcher. Used by training and evaluation alike."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def log(msg):
    if is_main():
        print(f"[tuneflow] {msg}", file=sys.stderr, flush=True)


def initialized() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier():
    if initialized():
        import torch.distributed as dist

        dist.barrier()


def die_with_launcher():
    """torchrun starts every rank in a session of its own, so a launcher killed with SIGKILL (a
    crashed node, `kill -9` of Snakemake's process group) would leave the ranks running on as
    orphans that could still write results later. Ask Linux to kill this rank when its parent dies."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above took effect
        os._exit(1)


def start(timeout_s: int):
    """Join the job's process group (gloo on CPU, nccl on GPU) when there is more than one rank;
    returns (rank, world size)."""
    import torch
    import torch.distributed as dist

    world = world_size()
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return rank(), world


def skip_deepspeed_cpu_kernel_build():
    """Keep DeepSpeed on CPU from JIT-building its shared-memory all-reduce when it starts: the build
    (or its up-to-date check) runs behind a lock file in ~/.cache/torch_extensions, and a rank killed
    inside it (preemption, a failed peer torn down by torchrun) leaves the lock behind, so every later
    job on the machine waits on it forever. The kernel serves only inference_all_reduce, which
    training never calls; gradients are all-reduced by gloo either way."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def start_for_trainer(training_args):
    """Initialise the process group (and DeepSpeed's) from a Trainer's arguments now rather than
    lazily inside the Trainer: the work-dir barrier needs it, and under ZeRO-3 from_pretrained
    partitions the weights across ranks only if DeepSpeed already knows the world size."""
    import torch

    if training_args.deepspeed and not torch.cuda.is_available():
        skip_deepspeed_cpu_kernel_build()
    device = training_args.device
    if training_args.deepspeed:
        import deepspeed

        # On GPU transformers already did this; on CPU (use_cpu) it only set up torch.distributed,
        # which DeepSpeed then adopts.
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return device


def gather(obj) -> list:
    """Every rank's `obj`, in rank order (just [obj] without a process group)."""
    if not initialized():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def end():
    """End a distributed rank that has finished its work: destroy the process group, flush, and
    leave with os._exit(0). Left to interpreter shutdown, gloo's worker threads can still hold
    work objects whose destruction aborts the rank ("terminate called without an active
    exception", SIGABRT) after all its outputs are written, and that fails the job; destroying the
    group alone made it rarer, not impossible (pytorch/pytorch#190489). Skipping finalization
    removes it. Returns (and does nothing) in a process without a process group. Only called on
    success: after an error the other ranks may never reach the matching collective."""
    if not initialized():
        return
    import torch.distributed as dist

    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

"""What a result was made with: package versions, the machine, the code's git commit, peak memory."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

PACKAGES = ("tuneflow", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed",
            "tokenizers", "safetensors", "bitsandbytes", "flash-attn", "liger-kernel")


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def hardware() -> dict:
    import torch

    from tuneflow.distributed import world_size

    info = {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "world_size": world_size(),
            "cuda": torch.version.cuda, "gpus": []}
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _git(*args, cwd=None):
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_state(repo_dir) -> dict:
    """{"git_commit", "git_dirty"} of the code in `repo_dir` (None where git cannot tell)."""
    commit = _git("rev-parse", "HEAD", cwd=repo_dir)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=repo_dir)
    return {"git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None}

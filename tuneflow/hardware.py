"""Choices that depend on the machine a job runs on: the device, the attention kernel, fused kernels."""

from __future__ import annotations


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device() -> str:
    from tuneflow.distributed import local_rank

    return f"cuda:{local_rank()}" if cuda_available() else "cpu"


def attn_implementation(choice: str) -> str:
    """`auto`: flash-attention 2 on a GPU where flash-attn imports, else PyTorch's SDPA."""
    if choice != "auto":
        return choice
    if cuda_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401

        return cuda_available()
    except ImportError:
        return False

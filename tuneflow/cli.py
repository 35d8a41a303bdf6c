"""Shared entry-point behaviour for scripts/: user errors print one line and exit 2."""

from __future__ import annotations

import json
import sys

from tuneflow.errors import TuneflowError


def run(main, argv=None):
    try:
        result = main(argv)
    except TuneflowError as e:
        print(f"tuneflow: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    end_distributed()
    return result


def end_distributed():
    """Destroy the default process group after a successful run. Left to interpreter shutdown,
    gloo's worker threads can outlive Python and abort the rank ("terminate called without an
    active exception", SIGABRT) after all its work is done, failing the job. Only on success:
    after an error the other ranks may never reach the matching collective."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def json_arg(text: str):
    """Parse a JSON command-line argument (Snakemake passes settings as one quoted JSON string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneflowError(f"invalid JSON argument: {e}") from None

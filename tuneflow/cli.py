"""Shared entry-point behaviour for scripts/: user errors print one line and exit 2."""

from __future__ import annotations

import json
import logging
import os
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
    """End a distributed rank that has finished its work: destroy the process group, flush, and
    leave with os._exit(0). Left to interpreter shutdown, gloo's worker threads can still hold
    work objects whose destruction aborts the rank ("terminate called without an active
    exception", SIGABRT) after all its outputs are written, and that fails the job; destroying the
    group alone made it rarer, not impossible (pytorch/pytorch#190489). Skipping finalization
    removes it. Returns (and does nothing) in a process without a process group. Only called on
    success: after an error the other ranks may never reach the matching collective."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def json_arg(text: str):
    """Parse a JSON command-line argument (Snakemake passes settings as one quoted JSON string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneflowError(f"invalid JSON argument: {e}") from None

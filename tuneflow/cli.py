"""Shared entry-point behaviour for scripts/: user errors print one line and exit 2."""

from __future__ import annotations

import json
import sys

from tuneflow import distributed
from tuneflow.errors import TuneflowError


def run(main, argv=None):
    try:
        result = main(argv)
    except TuneflowError as e:
        print(f"tuneflow: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    distributed.end()  # a rank that holds a process group leaves here (see distributed.end)
    return result


def json_arg(text: str):
    """Parse a JSON command-line argument (Snakemake passes settings as one quoted JSON string)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TuneflowError(f"invalid JSON argument: {e}") from None

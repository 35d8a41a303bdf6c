#!/usr/bin/env python
"""Train one stage (the train_<stage> rules), under torchrun (scripts/launch.py). The stage's
recipe is the module tuneflow.stages names for it (tuneflow/train/<stage>.py)."""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import run  # noqa: E402
from tuneflow.stages import STAGES  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        sys.exit(f"usage: train.py {{{','.join(STAGES)}}} --settings JSON --data DIR... --output DIR --work-dir DIR")
    recipe = importlib.import_module(STAGES[sys.argv[1]].recipe)
    run(recipe.main, sys.argv[2:])

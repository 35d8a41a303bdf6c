#!/usr/bin/env python
"""Train one stage (pt | sft | dpo); run under torchrun by scripts/launch.py (the train_* rules)."""
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import run  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("pt", "sft", "dpo"):
        sys.exit("usage: train.py {pt,sft,dpo} --settings JSON --data DIR... --output DIR --work-dir DIR")
    recipe = importlib.import_module(f"tuneflow.train.{sys.argv[1]}")
    run(recipe.main, sys.argv[2:])

#!/usr/bin/env python
"""Convert one dataset to canonical JSONL + manifest (the `convert` rule)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402
from tuneflow.data.convert import convert_dataset  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, type=json_arg,
                   help="the dataset's settings as JSON (tuneflow.plan.Plan.convert_settings)")
    p.add_argument("--out", required=True, help="output directory results/data/<name>")
    p.add_argument("--workers", type=int, default=1, help="processes that parse and convert records (the rule's threads)")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines in the log")
    a = p.parse_args(argv)
    m = convert_dataset(a.settings, a.out, workers=a.workers, progress_every=a.progress_every)
    c = m["counts"]
    print(f"{m['dataset']}: read {c['read']}, kept {c['kept']} (train {c['train']}, validation {c['validation']}), "
          f"dropped {c['dropped']}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

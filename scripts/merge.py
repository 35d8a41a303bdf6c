#!/usr/bin/env python
"""Merge a stage's adapter into its base model and check logits (the `merge` rule)."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, type=json_arg,
                   help='JSON (tuneflow.plan.Plan.merge_settings): {"base_model", "finetuning", "rope_scaling"}')
    p.add_argument("--adapter", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from tuneflow.merge import merge_adapter

    check = merge_adapter(a.settings, a.adapter, a.out)
    print("merge check:", json.dumps(check), file=sys.stderr)


if __name__ == "__main__":
    run(main)

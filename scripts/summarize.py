#!/usr/bin/env python
"""Collect all evaluation JSONs into results/eval/summary.tsv (the `summarize` rule)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", required=True, type=json_arg, help="[[variant, model, dataset, eval.json], ...]")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from tuneflow.summarize import write_summary

    rows = write_summary(a.jobs, a.out)
    print(f"{len(rows)} rows -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

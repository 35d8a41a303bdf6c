#!/usr/bin/env python
"""Write results/report/index.html (+ the bundle it was rendered from) (the `report` rule)."""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from tuneflow.cli import json_arg, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--summary", required=True)
    p.add_argument("--plan", required=True, type=json_arg,
                   help='{"eval_jobs": [[variant, model, dataset, path]], "trained": [[variant, stage, dir]], '
                        '"tokenized": [[stage label, dataset, dir]], "configs": {...}}')
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from tuneflow.io import write_json
    from tuneflow.report import build_bundle, write_report

    bundle = build_bundle(a.summary, a.plan["eval_jobs"], a.plan["trained"], a.plan["configs"], REPO,
                          tokenized=a.plan.get("tokenized", []))
    write_json(a.bundle, bundle)
    write_report(bundle, a.out)
    print(f"report -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

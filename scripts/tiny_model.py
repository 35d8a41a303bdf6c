#!/usr/bin/env python
"""Build the embedded tiny model (the `tiny_model` rule)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402
from tuneflow.tiny_model import build_tiny_model  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--settings", required=True, type=json_arg, help="tiny_model config block as JSON")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True)
    p.add_argument("corpus", nargs="+")
    a = p.parse_args(argv)
    info = build_tiny_model(a.settings, a.corpus, a.out, seed=a.seed)
    print(f"tiny model: {info['parameters']:,} parameters, vocab {info['vocab_size']}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

#!/usr/bin/env python
"""Tokenize one converted dataset for one kind of training rows (the `tokenize` rule; the code is
tuneflow/tokenize.py). Not named tokenize.py: every script here has scripts/ on its import path,
where that name would shadow the standard library's `tokenize` module."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="converted dataset directory (results/data/<name>)")
    p.add_argument("--settings", required=True, type=json_arg,
                   help='JSON (tuneflow.plan.Plan.tokenize_settings): {"kind", "model": {base_model block}, '
                        '"max_length", "chat_template", "mask_prompt"}')
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=1, help="processes that tokenize (the rule's threads)")
    p.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines in the log")
    a = p.parse_args(argv)

    from datasets import disable_progress_bars

    from tuneflow import models
    from tuneflow.tokenize import tokenize_dataset

    disable_progress_bars()
    s = a.settings
    model_dir = models.resolve_model_path(s["model"]["path"], s["model"].get("revision"))
    model_cfg = models.check_model_dir(model_dir, s["model"], weights_expected=False)
    tok = models.load_tokenizer(model_dir, s["model"], s.get("chat_template"))
    models.check_tokenizer_fits(tok, model_cfg, model_dir)
    meta = tokenize_dataset(a.data, tok, s, a.out, workers=a.workers, progress_every=a.progress_every)
    print(f"tokenized {a.data} ({s['kind']}): {meta['splits']['train']}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

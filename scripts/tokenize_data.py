#!/usr/bin/env python
"""Tokenize one converted dataset for one stage kind (the `tokenize` rule)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import json_arg, run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kind", required=True, choices=["pt", "sft", "dpo"])
    p.add_argument("--data", required=True, help="converted dataset directory (results/data/<name>)")
    p.add_argument("--settings", required=True, type=json_arg,
                   help='JSON: {"model": {base_model block}, "chat_template", "max_length", "mask_prompt"}')
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    from datasets import disable_progress_bars

    from tuneflow import models
    from tuneflow.tokenization import tokenize_dataset

    disable_progress_bars()
    s = a.settings
    model_dir = models.resolve_model_path(s["model"]["path"], s["model"].get("revision"))
    model_cfg = models.check_model_dir(model_dir, s["model"], weights_expected=False)
    tok = models.load_tokenizer(model_dir, s["model"], s.get("chat_template") if a.kind != "pt" else None)
    models.check_tokenizer_fits(tok, model_cfg, model_dir)
    models.check_max_length(s["max_length"], model_cfg, s.get("max_length_key", "training.max_length"), s.get("rope_scaling"))
    meta = tokenize_dataset(a.kind, a.data, tok, {k: v for k, v in s.items() if k != "model"}, a.out)
    tr = meta["splits"]["train"]
    print(f"tokenized {a.data} ({a.kind}): {tr}", file=sys.stderr)


if __name__ == "__main__":
    run(main)

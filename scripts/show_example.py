#!/usr/bin/env python
"""See what the model sees: print one tokenized training row per dataset, the tokens that carry
loss marked (colour on a terminal, [[double brackets]] otherwise), with the token counts.

    snakemake --profile local --until tokenize     # tokenizing is quick and needs no GPU
    python scripts/show_example.py                 # every results/tokenized/<dataset>/<kind>-<hash>
    python scripts/show_example.py results/tokenized/demo_sharegpt/sft-0123456789 --row 3

Check the chat template this way before spending GPU hours: the marked text of an SFT row must be
exactly each assistant reply and its end-of-turn token.
"""
import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tuneflow.cli import run  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="*", help="tokenized dataset directories (default: all under results/tokenized)")
    p.add_argument("--row", type=int, default=0, help="which training row (default: the first)")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    a = p.parse_args(argv)

    from datasets import disable_progress_bars, load_from_disk

    from tuneflow import models
    from tuneflow.errors import TuneflowError
    from tuneflow.show_example import example, render

    disable_progress_bars()
    dirs = [Path(d) for d in a.dirs] or sorted(p.parent for p in Path("results/tokenized").glob("*/*/meta.json"))
    if not dirs:
        raise TuneflowError("no tokenized data under results/tokenized: run `snakemake --profile local --until "
                            "tokenize` first, or name the directories")
    color = a.color == "always" or (a.color == "auto" and sys.stdout.isatty())
    tokenizers = {}
    for d in dirs:
        meta_path = d / "meta.json"
        if not meta_path.is_file():
            raise TuneflowError(f"{d} is not a tokenized dataset directory (no meta.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        s = meta["settings"]
        key = json.dumps([s["model"], s.get("chat_template")], sort_keys=True)
        if key not in tokenizers:
            model_dir = models.resolve_model_path(s["model"]["path"], s["model"].get("revision"))
            tokenizers[key] = models.load_tokenizer(model_dir, s["model"], s.get("chat_template"))
        rows = load_from_disk(str(d / "train"))
        if not 0 <= a.row < len(rows):
            raise TuneflowError(f"{d}: --row {a.row} is out of range (the training split has {len(rows)} rows)")
        print(f"== {Path(meta['source']).name} ({meta['kind']}; tokenizer {s['model']['path']}; template "
              f"{s.get('chat_template', '-')}; max length {s['max_length']}) row {a.row} of {len(rows)}: {d}")
        print(render(example(tokenizers[key], rows[a.row], meta["kind"]), color))
        print()


if __name__ == "__main__":
    run(main)

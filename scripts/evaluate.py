#!/usr/bin/env python
"""Score model predictions.

Subcommands:
  model         evaluate one model on the validation splits of several datasets (the `evaluate`
                rule; runs under torchrun via scripts/launch.py, see tuneflow/eval/evaluate.py)
  promptcblue   official PromptCBLUE rules (tuneflow.eval.promptcblue); writes a JSON of scores

    python scripts/evaluate.py promptcblue --pred PRED.jsonl --gold GOLD.jsonl --out SCORES.json

Exit status: 0 on success; 2 on a user error (unreadable file, malformed JSON line, unknown task,
or with --strict a missing prediction): the message names the file and line.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402

from tuneflow.cli import json_arg, run  # noqa: E402


def _print_table(result: dict, out=sys.stdout) -> None:
    width = max([len(t) for t in result["tasks"]] + [len("overall")])
    for task, entry in result["tasks"].items():
        print(f"{task:<{width}}  {entry['score']:8.2f}  {entry['primary']:<16} n={entry['n']}", file=out)
    print(f"{'overall':<{width}}  {result['overall']:8.2f}", file=out)


def cmd_promptcblue(args) -> int:
    from tuneflow.eval.promptcblue import evaluate_files, round_scores
    from tuneflow.io import write_json

    result = evaluate_files(args.pred, args.gold, pred_field=args.pred_field, strict=args.strict)
    if result["n_missing"]:
        print(f"warning: {result['n_missing']} gold record(s) have no prediction in {args.pred}; "
              "they are scored as empty predictions (the official scorer would reject the file; "
              "use --strict to fail instead)", file=sys.stderr)
    if result["n_extra_predictions"]:
        print(f"warning: {result['n_extra_predictions']} prediction(s) in {args.pred} match no gold "
              "record and were ignored", file=sys.stderr)
    if args.digits >= 0:
        result = round_scores(result, args.digits)
    write_json(args.out, result)
    if not args.quiet:
        _print_table(result)
    return 0


def cmd_model(args) -> int:
    from pathlib import Path

    from tuneflow.eval.evaluate import evaluate

    evaluate(args.settings, {Path(d).name: d for d in args.data}, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description="Score model predictions.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    m = sub.add_parser("model", help="evaluate a model on datasets' validation splits (the evaluate rule)")
    m.add_argument("--settings", required=True, type=json_arg, help="evaluation settings as JSON (tuneflow.plan)")
    m.add_argument("--data", required=True, nargs="+", help="converted dataset directories results/data/<name>")
    m.add_argument("--out", required=True, help="output directory results/eval/<model> (written atomically)")
    m.set_defaults(func=cmd_model)

    p = sub.add_parser("promptcblue", help="PromptCBLUE with the official scoring rules",
                       description="Score free-text predictions with the official PromptCBLUE rules "
                                   "(answer templates parsed per task; see tuneflow/eval/promptcblue.py).")
    p.add_argument("--pred", required=True,
                   help="JSON lines with sample_id and the generated text (.gz ok)")
    p.add_argument("--gold", required=True,
                   help="PromptCBLUE JSON lines {input, target, answer_choices, task_type, task_dataset, "
                        "sample_id} (.gz ok; \\n, \\r\\n or \\r line ends)")
    p.add_argument("--out", required=True, help="where to write the scores JSON")
    p.add_argument("--pred-field", default="target", help="field of PRED holding the text (default: target)")
    p.add_argument("--strict", action="store_true",
                   help="fail when a gold record has no prediction (as the official scorer does) "
                        "instead of scoring it as an empty prediction")
    p.add_argument("--digits", type=int, default=4,
                   help="round scores in the JSON to this many decimals (-1: no rounding; default 4)")
    p.add_argument("--quiet", action="store_true", help="do not print the score table")
    p.set_defaults(func=cmd_promptcblue)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(run(main))

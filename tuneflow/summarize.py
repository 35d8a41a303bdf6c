"""Collect every evaluation into one tidy table (results/eval/summary.tsv; the `summarize` rule)."""

from __future__ import annotations

import csv
from pathlib import Path

from tuneflow.io import atomic_file, read_json, verify_dir

COLUMNS = ("model", "stage", "variant", "dataset", "metric", "value")
LOWER_IS_BETTER = {"eval_loss": "lower", "perplexity": "lower"}


def summary_rows(jobs):
    """jobs: (variant, stage, dataset, path) of every evaluation; a variant that reuses the default's
    evaluation of a model lists it under its own name too, so every variant has complete rows.
    `model` is the directory (or hub name) of the model evaluated, `stage` which one it is (base,
    pt, sft, dpo)."""
    rows = []
    for eval_dir in sorted({str(Path(job[3]).parent) for job in jobs}):
        verify_dir(eval_dir, required=False)  # as its evaluate job wrote it
    for variant, stage, dataset, path in jobs:
        res = read_json(path)
        model = res["settings"]["model"]["path"]
        for metric, value in sorted(res["metrics"].items()):
            rows.append({"model": model, "stage": stage, "variant": variant, "dataset": dataset,
                         "metric": metric, "value": value})
    return rows


def write_summary(jobs, out_path):
    rows = summary_rows(jobs)
    with atomic_file(out_path) as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": f"{r['value']:.6g}"})
    return rows


def read_summary(path):
    with open(path, encoding="utf-8") as f:
        return [{**r, "value": float(r["value"])} for r in csv.DictReader(f, delimiter="\t")]

"""Collect every evaluation into one tidy table (results/eval/summary.tsv) and assemble the
report bundle (everything results/report/index.html shows, as one JSON document)."""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
from pathlib import Path

from tuneflow.io import atomic_file, read_json

COLUMNS = ("model", "stage", "variant", "dataset", "metric", "value")
LOWER_IS_BETTER = {"eval_loss": "lower", "perplexity": "lower"}


def summary_rows(jobs):
    """jobs: (variant, stage, dataset, path) of every evaluation; a variant that reuses the default's
    evaluation of a model lists it under its own name too, so every variant has complete rows.
    `model` is the directory (or hub name) of the model evaluated, `stage` which one it is (base,
    pt, sft, dpo)."""
    rows = []
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


def _git(*args, cwd=None):
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def merge_per_stage(recorded) -> dict:
    """[(stage label, {key: value})] -> {key: value}, or 'value (stages); other (stages)' where the
    stages recorded different values (say, training on another node or software version)."""
    merged = {}
    for key in dict.fromkeys(k for _, d in recorded for k in d):
        by_value = {}
        for label, d in recorded:
            if key in d:
                by_value.setdefault(repr(d[key]), (d[key], []))[1].append(label)
        if len(by_value) == 1:
            merged[key] = next(iter(by_value.values()))[0]
        else:
            merged[key] = "; ".join(f"{v} ({', '.join(labels)})" for v, labels in by_value.values())
    return merged


def build_bundle(summary_path, eval_jobs, trained, configs, repo_dir, title="tuneflow report") -> dict:
    """trained: (variant, stage, adapter_dir); configs: variant -> effective config."""
    from tuneflow.train.common import versions

    training, wall = [], []
    data_seen = {}
    packages, hardware = [], []  # what each stage recorded when it trained, not what the report runs with
    for variant, stage, adapter_dir in trained:
        info = read_json(Path(adapter_dir) / "train_info.json")
        log = read_json(Path(adapter_dir) / "loss_log.json")
        training.append({"variant": variant, "stage": stage, "finetuning": info.get("finetuning"), "log": log,
                         "info": {k: info.get(k) for k in ("wall_time_s", "train_runtime_s", "world_size", "train_tokens",
                                                           "steps", "resumed_from_step", "deepspeed")}})
        wall.append({"variant": variant, "stage": stage, "seconds": info.get("wall_time_s")})
        label = stage if variant == "default" else f"{variant}/{stage}"
        packages.append((label, info.get("versions") or {}))
        hardware.append((label, info.get("hardware") or {}))
        for d in info.get("data", []):
            data_seen[d["dataset"]] = {"dataset": d["dataset"], "files": d["sources"],
                                       "kept": d["counts"]["kept"], "dropped": d["counts"]["dropped"]}
    promptcblue = []
    for variant, model, dataset, path in eval_jobs:
        res = read_json(path)
        if "promptcblue" in res:
            p = res["promptcblue"]
            promptcblue.append({"variant": variant, "model": model, "dataset": dataset, "overall": p["overall"],
                                "tasks": {t: {"primary": e["primary"], "score": e["score"]} for t, e in p["tasks"].items()}})
    commit = _git("rev-parse", "HEAD", cwd=repo_dir)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=repo_dir)
    return {
        "title": title,
        "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "summary": read_summary(summary_path),
        "metric_direction": LOWER_IS_BETTER,
        "training": training,
        "promptcblue": promptcblue,
        "configs": configs,
        "provenance": {"git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None,
                       "packages": merge_per_stage(packages) if packages else versions(),
                       "hardware": merge_per_stage(hardware), "data": list(data_seen.values()),
                       "wall_time": wall},
    }

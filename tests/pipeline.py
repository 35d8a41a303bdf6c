"""Helpers for the tests that run the demo pipeline (tests/config/ci.yaml) through Snakemake."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

from conftest import snakemake

CI_CONFIG = "tests/config/ci.yaml"


def copy_project(src: Path, dest: Path) -> Path:
    """A copy of a project that has run, results and Snakemake metadata included (mtimes kept)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("locks", "__pycache__"))
    return dest


def run_ci(workdir, *targets, configs=(), options=(), **kw):
    """snakemake --profile local <options> <targets> --configfile tests/config/ci.yaml <configs>
    (--configfile takes several files, so it goes last)."""
    return snakemake(workdir, "--profile", "local", *options, *targets, "--configfile", CI_CONFIG, *map(str, configs), **kw)


def planned_jobs(workdir, configs=()) -> set[tuple[str, str]]:
    """(rule, output) of every job `snakemake -n` plans (the `all` target excluded)."""
    out = run_ci(workdir, configs=configs, options=("-n",)).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if m:
            rule = m.group(1)
            continue
        m = re.match(r"^\s+output: (.+)$", line)
        if m and rule:
            jobs.add((rule, m.group(1).split(", ")[0]))
            rule = None
    return {j for j in jobs if j[0] != "all"}


def summary(workdir) -> dict:
    """(variant, stage, dataset, metric) -> value from results/eval/summary.tsv."""
    with open(Path(workdir) / "results" / "eval" / "summary.tsv", encoding="utf-8") as f:
        return {(r["variant"], r["stage"], r["dataset"], r["metric"]): float(r["value"]) for r in csv.DictReader(f, delimiter="\t")}


def loss_log(adapter_dir) -> list[dict]:
    return json.loads((Path(adapter_dir) / "loss_log.json").read_text())


def train_info(adapter_dir) -> dict:
    return json.loads((Path(adapter_dir) / "train_info.json").read_text())


def load_tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

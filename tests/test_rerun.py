"""Rerun only what changed: the exact set of jobs Snakemake plans after each kind of change to a
project that has run the whole demo pipeline (a copy of the session's demo run)."""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml

from pipeline import copy_project, planned_jobs

pytestmark = pytest.mark.slow

REPORT = {("report", "results/report/index.html")}
REPORTING = {("summarize", "results/eval/summary.tsv")} | REPORT


def trained(*stages):
    """The jobs of training, merging and evaluating each stage."""
    return {j for s in stages for j in (("train_" + s, f"results/adapters/{s}"), ("merge", f"results/merged/{s}"),
                                        ("evaluate", f"results/eval/{s}"))}


BRANCHES = ("dpo", "rm", "rl", "kto")  # everything that starts from the merged SFT model
DOWNSTREAM_OF_SFT = trained("sft", *BRANCHES) | REPORTING
ALL_EVALS = {("evaluate", f"results/eval/{m}") for m in ("base", "pt", "sft", *BRANCHES)}


@pytest.fixture
def project(demo_run, tmp_path):
    return copy_project(demo_run, tmp_path / "project")


def overlay(project, data) -> str:
    path = project / "change.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_nothing_changed_nothing_runs(project):
    assert planned_jobs(project) == set()


def test_sft_hyperparameter_reruns_sft_and_downstream_only(project):
    change = overlay(project, {"stages": {"sft": {"training": {"learning_rate": 0.0025}}}})
    assert planned_jobs(project, configs=[change]) == DOWNSTREAM_OF_SFT


def test_sft_max_length_also_retokenizes_sft_data(project):
    change = overlay(project, {"stages": {"sft": {"training": {"max_length": 160}}}})
    jobs = planned_jobs(project, configs=[change])
    tokenize = {j for j in jobs if j[0] == "tokenize"}
    # the instruction data and the PT text SFT also trains on
    assert {j[1].split("/")[2] for j in tokenize} == {"demo_alpaca", "demo_sharegpt", "demo_promptcblue", "demo_text"}
    assert jobs - tokenize == DOWNSTREAM_OF_SFT


def test_eval_max_new_tokens_reruns_evaluations_and_report_only(project):
    change = overlay(project, {"evaluation": {"max_new_tokens": 10}})
    # the reward model generates nothing: its evaluation (pairwise accuracy) stays
    assert planned_jobs(project, configs=[change]) == ALL_EVALS - {("evaluate", "results/eval/rm")} | REPORTING


def test_dpo_beta_reruns_dpo_only(project):
    change = overlay(project, {"stages": {"dpo": {"beta": 0.3}}})
    assert planned_jobs(project, configs=[change]) == {
        ("train_dpo", "results/adapters/dpo"), ("merge", "results/merged/dpo"), ("evaluate", "results/eval/dpo")} | REPORTING


def test_raw_data_content_reruns_everything_downstream_of_that_dataset(project):
    raw = project / "resources" / "demo" / "dpo_pairs.jsonl"
    lines = raw.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["rejected"] = first["rejected"] + "?"
    raw.write_text("\n".join([json.dumps(first, ensure_ascii=False)] + lines[1:]) + "\n", encoding="utf-8")
    jobs = planned_jobs(project)
    tokenize = {j for j in jobs if j[0] == "tokenize"}
    # the pairs feed DPO and the reward model (the same rows) and KTO (unpaired); RL scores with the reward model
    assert {j[1].rsplit("/", 1)[0] for j in tokenize} == {"results/tokenized/demo_pairs"}
    assert {j[1].rsplit("/", 1)[1].split("-")[0] for j in tokenize} == {"dpo", "kto"} and len(tokenize) == 2
    assert jobs - tokenize == {("convert", "results/data/demo_pairs")} | trained(*BRANCHES) | ALL_EVALS | REPORTING


def test_rl_kl_coef_reruns_rl_and_what_follows_only(project):
    change = overlay(project, {"stages": {"rl": {"kl_coef": 0.3}}})
    assert planned_jobs(project, configs=[change]) == trained("rl") | REPORTING


def test_disabling_dpo_leaves_the_rl_branch_untouched(project):
    """Only the summary and the report change (they list one model less)."""
    change = overlay(project, {"stages": {"dpo": {"enabled": False}}})
    assert planned_jobs(project, configs=[change]) == REPORTING


def test_editing_the_sft_recipe_reruns_sft_and_downstream(project):
    recipe = project / "tuneflow" / "train" / "sft.py"
    recipe.write_text(recipe.read_text() + "\n# an edit\n")
    future = time.time() + 5
    os.utime(recipe, (future, future))
    assert planned_jobs(project) == DOWNSTREAM_OF_SFT


def test_a_variant_changing_only_dpo_beta_reuses_pt_and_sft(project):
    change = overlay(project, {"variants": {"beta03": {"stages": {"dpo": {"beta": 0.3}}}}})
    assert planned_jobs(project, configs=[change]) == {
        ("train_dpo", "results/variants/beta03/adapters/dpo"), ("merge", "results/variants/beta03/merged/dpo"),
        ("evaluate", "results/variants/beta03/eval/dpo")} | REPORTING


def test_editing_the_deepspeed_config_reruns_the_stages_that_use_it(project):
    """tests/config/ci.yaml trains every stage under zero2: all rerun, data and base eval do not."""
    ds = project / "config" / "deepspeed" / "zero2.json"
    before = ds.read_text()
    ds.write_text(before.replace('"allgather_bucket_size": 200000000', '"allgather_bucket_size": 100000000'))
    assert ds.read_text() != before
    future = time.time() + 5
    os.utime(ds, (future, future))
    jobs = planned_jobs(project)
    assert jobs == {("train_pt", "results/adapters/pt"), ("merge", "results/merged/pt"), ("evaluate", "results/eval/pt")} \
        | DOWNSTREAM_OF_SFT


def test_more_ranks_retrain_but_another_partition_time_limit_or_merge_memory_does_not(project):
    more = overlay(project, {"stages": {"sft": {"resources": {"nodes": 2}}}})  # twice the global batch
    assert planned_jobs(project, configs=[more]) == DOWNSTREAM_OF_SFT
    longer = overlay(project, {"stages": {"sft": {"resources": {"runtime": 999, "mem_mb": 12000}}}})
    assert planned_jobs(project, configs=[longer]) == REPORT  # it shows the whole config
    roomier_merge = overlay(project, {"stages": {"sft": {"merge_resources": {"mem_mb": 64000, "runtime": 20}}}})
    assert planned_jobs(project, configs=[roomier_merge]) == REPORT

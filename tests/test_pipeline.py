"""The demo pipeline end to end through Snakemake on CPU: PT -> SFT -> {DPO, RM -> RL, KTO} ->
merge -> evaluate -> report, every training stage on 2 torchrun ranks (gloo) under DeepSpeed ZeRO-2
(and once under ZeRO-3), then checks of what it produced."""

from __future__ import annotations

import json
import subprocess
import zipfile

import pytest
import torch
import yaml

from conftest import FAKE_HF_TOKEN, make_workdir, skip_or_fail
from pipeline import copy_project, load_tensors, loss_log, max_abs_diff, run_ci, summary, train_info
from tuneflow.stages import STAGE_NAMES, STAGES

pytestmark = pytest.mark.slow


def _losses(log):
    return [e["loss"] for e in log if e.get("loss") is not None]


# Loss is what these stages minimise; RL's loss is a policy-gradient surrogate that need not fall
# (its reward, KL and completion length are checked instead).
LOSS_FALLS = ("pt", "sft", "dpo", "rm", "kto")


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_trained_on_two_ranks_with_zero2_and_logged_its_curves(demo_run, stage):
    adapter = demo_run / "results" / "adapters" / stage
    info = train_info(adapter)
    assert info["world_size"] == 2 and info["deepspeed"] == "zero2"
    assert info["steps"] == info["settings"]["training"]["max_steps"]
    log = loss_log(adapter)
    losses = _losses(log)
    assert len(losses) >= 3
    if stage in LOSS_FALLS:
        first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
        assert last < first, losses
    for key, _ in STAGES[stage].curves:  # what the report charts over training
        assert sum(e.get(key) is not None for e in log) >= 2, (key, log[-1])
    weights = "model.safetensors" if info["finetuning"] == "full" else "adapter_model.safetensors"
    assert (adapter / weights).is_file() and not list(adapter.glob("*.bin"))
    assert list((adapter / "runs").rglob("events.out.tfevents.*")), "TensorBoard events missing"


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_merged_model_matches_adapter_inference(demo_run, stage):
    check = json.loads((demo_run / "results" / "merged" / stage / "merge_check.json").read_text())
    assert check["max_abs_diff"] <= check.get("tolerance", 0.0)
    if train_info(demo_run / "results" / "adapters" / stage)["finetuning"] != "full":
        assert check["samples"] == [4, 32] and check["dtype"] == "float32"  # logits of adapter vs merged model
    assert (demo_run / "results" / "merged" / stage / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", ["dpo", "rm", "rl", "kto"])
def test_every_branch_starts_from_the_merged_sft_model(demo_run, stage):
    info = train_info(demo_run / "results" / "adapters" / stage)
    assert info["settings"]["base_model"]["path"] == "results/merged/sft"
    if stage != "rm":
        assert info["reference_model"] == "results/merged/sft"


def test_reward_model_loads_with_plain_transformers_and_ranks_held_out_pairs(demo_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = demo_run / "results" / "merged" / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    tok = AutoTokenizer.from_pretrained(merged)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    texts = [tok.apply_chat_template([{"role": "user", "content": "Add the two numbers.\n2 + 2"},
                                      {"role": "assistant", "content": a}], tokenize=False) for a in ("4", "5 5 5")]
    with torch.no_grad():
        scores = model(**tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()
    s = summary(demo_run)
    assert 0 <= s[("default", "rm", "demo_pairs", "pairwise_accuracy")] <= 100
    assert ("default", "rm", "demo_pairs", "mean_margin") in s
    assert not [k for k in s if k[1] == "rm" and k[2] != "demo_pairs"], "a reward model is evaluated on pairs only"


def test_rl_used_its_rewards_and_the_same_rewards_score_the_branches_held_out(demo_run):
    info = train_info(demo_run / "results" / "adapters" / "rl")
    assert [r["name"] for r in info["rewards"]] == ["rm", "promptcblue"]
    assert info["rewards"][0]["reward_model"] == "results/merged/rm"
    assert info["reward_tokenizers"]["rm"]["same_as_policy"] is True
    log = loss_log(demo_run / "results" / "adapters" / "rl")
    assert any(e.get("rewards/promptcblue/mean") is not None for e in log)
    s = summary(demo_run)
    for model in ("sft", "dpo", "rl", "kto"):  # RL, the model it starts from and its sibling branches
        assert ("default", model, "demo_promptcblue", "reward/promptcblue") in s
        assert ("default", model, "demo_alpaca", "mean_reward") in s
    assert ("default", "pt", "demo_alpaca", "mean_reward") not in s


def test_kto_unpaired_the_pairs_and_scored_against_its_reference(demo_run):
    info = train_info(demo_run / "results" / "adapters" / "kto")
    assert info["examples"]["desirable"] == info["examples"]["undesirable"] > 0
    meta = json.loads(next((demo_run / "results" / "tokenized" / "demo_pairs").glob("kto-*/meta.json")).read_text())
    assert meta["splits"]["train"]["unpaired_from_pairs"] == meta["splits"]["train"]["desirable"]
    assert ("default", "kto", "demo_pairs", "preference_accuracy") in summary(demo_run)


def test_sft_beats_the_base_model(demo_run):
    s = summary(demo_run)
    for dataset in ("demo_alpaca", "demo_sharegpt", "demo_promptcblue"):
        assert s[("default", "sft", dataset, "eval_loss")] < s[("default", "base", dataset, "eval_loss")] - 1.0
    better = [(d, m) for d in ("demo_alpaca", "demo_sharegpt", "demo_promptcblue") for m in ("rougeL", "exact_match")
              if s[("default", "sft", d, m)] > s[("default", "base", d, m)]]
    assert better, "SFT should beat the base model on some generation metric of the demo tasks"
    assert ("default", "dpo", "demo_pairs", "preference_accuracy") in s
    assert ("default", "sft", "demo_promptcblue", "promptcblue_overall") in s


def test_results_carry_provenance_and_no_checkpoints_are_left(demo_run):
    info = train_info(demo_run / "results" / "adapters" / "sft")
    assert info["versions"]["torch"] and info["versions"]["trl"] and info["hardware"]["world_size"] == 2
    assert {d["dataset"] for d in info["data"]} == {"demo_text", "demo_alpaca", "demo_sharegpt", "demo_promptcblue"}
    assert all(len(src["sha256"]) == 64 for d in info["data"] for src in d["sources"])
    assert not (demo_run / "results" / "work").exists() or not any((demo_run / "results" / "work").rglob("checkpoint-*"))
    hidden = [p for p in (demo_run / "results").rglob(".*tmp*")]
    assert hidden == []


def test_hub_token_is_written_nowhere(demo_run):
    """The demo ran with HF_TOKEN set: no result, log, Snakemake record or report holds it."""
    token = FAKE_HF_TOKEN.encode()
    places = [p for d in ("results", "logs", ".snakemake") for p in (demo_run / d).rglob("*") if p.is_file()]
    assert len(places) > 50
    assert [str(p) for p in places if token in p.read_bytes()] == []


@pytest.mark.browser
def test_report_page_renders_in_headless_chromium(demo_run, tmp_path):
    from browser import browser_missing, render_and_inspect

    if why := browser_missing():
        skip_or_fail(why)
    shot = tmp_path / "report.png"
    info = render_and_inspect(demo_run / "results" / "report" / "index.html", shot)
    print("report screenshot:", shot)
    rows = info["tables"]["summary-table"]["visible_rows"]
    assert rows >= 20 and info["tables"]["summary-table"]["height"] > 100
    assert info["tables"]["promptcblue-table"]["visible_rows"] >= 3
    assert info["tables"]["branches-sft"]["visible_rows"] >= 10  # DPO, RM, RL, KTO next to SFT
    # The demo's own task, as the page shows it: SFT's eval loss below the base model's, marked better.
    table = info["tables"]["summary-table"]
    col = table["head"].index("SFT − base")
    for dataset in ("demo_alpaca", "demo_sharegpt", "demo_promptcblue"):
        row = next(r for r in table["cells"] if [c[0] for c in r[:3]] == ["default", dataset, "eval_loss"])
        assert "good" in row[col][1] and row[col][0].startswith("▼ -"), row
    charts = [s for s in info["svgs"] if s["width"] > 100 and s["height"] > 100]
    assert len(charts) >= 6 and all(s["polylines"] + s["paths"] >= 1 for s in charts)
    assert max(s["max_points"] for s in charts) >= 10
    assert info["resources"] == [] and info["external_refs"] == [] and info["console_errors"] == []
    assert info["screenshot"]["distinct_colors"] > 50 and 0.02 < info["screenshot"]["non_background_fraction"] < 0.9
    html = (demo_run / "results" / "report" / "index.html").read_text()
    assert "http://" not in html and "https://" not in html and "<script src" not in html


def test_snakemake_report_zip(demo_run):
    run_ci(demo_run, options=("--report", "report.zip"))
    with zipfile.ZipFile(demo_run / "report.zip") as z:
        names = z.namelist()
    assert any(n.endswith("summary.tsv") for n in names) and any(n.endswith("index.html") for n in names)


def test_second_run_plans_nothing(demo_run):
    proc = run_ci(demo_run, options=("-n",))
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_same_config_twice_gives_identical_adapters(demo_run, tmp_path):
    """Retrain SFT from scratch in a copy of the project: the adapter is bit-for-bit the same."""
    project = copy_project(demo_run, tmp_path / "again")
    reference = load_tensors(demo_run / "results" / "adapters" / "sft" / "adapter_model.safetensors")
    subprocess.run(["rm", "-rf", str(project / "results" / "adapters" / "sft")], check=True)
    run_ci(project, "results/adapters/sft")
    again = load_tensors(project / "results" / "adapters" / "sft" / "adapter_model.safetensors")
    assert max_abs_diff(reference, again) == 0.0


def test_zero3_chain(tmp_path):
    """PT -> SFT -> {DPO, RM -> RL, KTO} -> merge with every stage under DeepSpeed ZeRO-3 on 2 ranks
    (the reward model trained in full here: the demo's LoRA one is the ZeRO-2 run's)."""
    project = make_workdir(tmp_path / "zero3")
    overlay = project / "zero3.yaml"
    stages = {s: {"deepspeed": "zero3"} for s in STAGE_NAMES}
    stages["rm"]["finetuning"] = "full"
    overlay.write_text(yaml.safe_dump({"stages": stages}))
    run_ci(project, *(f"results/merged/{s}" for s in STAGE_NAMES), configs=[overlay])
    for stage in STAGE_NAMES:
        adapter = project / "results" / "adapters" / stage
        info = train_info(adapter)
        assert info["world_size"] == 2 and info["deepspeed"] == "zero3"
        log = loss_log(adapter)
        losses = _losses(log)
        if stage in LOSS_FALLS:
            assert sum(losses[-2:]) < sum(losses[:2]), (stage, losses)
        assert all(any(e.get(key) is not None for e in log) for key, _ in STAGES[stage].curves), stage
        check = json.loads((project / "results" / "merged" / stage / "merge_check.json").read_text())
        assert check["max_abs_diff"] <= check.get("tolerance", 0.0)

"""The report page opened in real headless Chromium: tables and SVG charts must really render."""

import math
import random

import pytest

from browser import browser_missing, render_and_inspect
from conftest import skip_or_fail
from tuneflow.report import write_report

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

VARIANTS = ("default", "r8")
STAGES = ("pt", "sft", "dpo")
DATASETS = ("demo_alpaca", "demo_promptcblue")
METRICS = ("rougeL", "bleu4", "eval_loss", "perplexity")
TASKS = ("KUAKE-QIC", "CMeEE-V2", "CHIP-CDN", "CMeIE", "IMCS-V2-NER", "MedDG")


def realistic_bundle(n_log=100, seed=0):
    rnd = random.Random(seed)
    summary = []
    for v in VARIANTS:
        for d in DATASETS:
            for m in METRICS:
                for model in ("base", "pt", "sft", "dpo"):
                    summary.append({"model": model, "stage": model, "variant": v, "dataset": d,
                                    "metric": m, "value": round(rnd.uniform(1, 60), 3)})
    training = []
    for v in VARIANTS:
        for s in STAGES:
            log = []
            for i in range(n_log):
                step = (i + 1) * 5
                log.append({"step": step, "epoch": step / 250,
                            "loss": 3.0 * math.exp(-i / 40) + 0.8 + rnd.uniform(-0.05, 0.05),
                            "learning_rate": 2e-4 * min(1, (i + 1) / 10) * (1 - i / n_log),
                            "grad_norm": rnd.uniform(0.5, 2), "eval_loss": None})
                if i % 20 == 19:
                    log.append({"step": step, "eval_loss": 3.0 * math.exp(-i / 45) + 0.9})
            training.append({"variant": v, "stage": s, "finetuning": "lora", "log": log,
                             "info": {"wall_time_s": 80.0 + rnd.random() * 20, "train_runtime_s": 70.1,
                                      "world_size": 2, "train_tokens": 123456, "steps": n_log * 5,
                                      "resumed_from_step": None, "deepspeed": "zero2"}})
    promptcblue = [{"variant": v, "model": m, "dataset": "demo_promptcblue",
                    "overall": round(rnd.uniform(20, 70), 2),
                    "tasks": {t: {"primary": "micro_f1", "score": round(rnd.uniform(10, 90), 2)}
                              for t in TASKS}}
                   for v in VARIANTS for m in ("sft", "dpo")]
    base_cfg = {"model": {"name_or_path": "resources/tiny-llama"},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
                "sft": {"lr": 2e-4, "epochs": 2}, "dpo": {"beta": 0.1}}
    r8_cfg = {**base_cfg, "lora": {**base_cfg["lora"], "r": 8, "alpha": 16}}
    return {
        "title": "tuneflow report", "generated_at": "2026-11-23T18:00:00Z",
        "summary": summary,
        "metric_direction": {"eval_loss": "lower", "perplexity": "lower"},
        "training": training, "promptcblue": promptcblue,
        "configs": {"default": base_cfg, "r8": r8_cfg},
        "provenance": {"git_commit": "abc123", "git_dirty": False,
                       "packages": {"torch": "2.13.0", "transformers": "5.23.0"},
                       "hardware": {"cpu": "Test CPU", "gpus": [], "hostname": "node1"},
                       "data": [{"dataset": "demo_alpaca",
                                 "files": [{"path": "resources/demo/sft_alpaca.json", "sha256": "0" * 64}],
                                 "kept": 349, "dropped": 0}],
                       "wall_time": [{"variant": v, "stage": s, "seconds": 81.2}
                                     for v in VARIANTS for s in STAGES]},
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    why = browser_missing()
    if why:
        skip_or_fail(why)
    out = tmp_path_factory.mktemp("report")
    page = write_report(realistic_bundle(), out / "index.html")
    info = render_and_inspect(page, out / "report.png")
    print(f"\nreport screenshot: {info['screenshot']['path']}")
    return info


def test_summary_table_rows_render(rendered):
    t = rendered["tables"]["summary-table"]
    expected = len(VARIANTS) * len(DATASETS) * len(METRICS)
    assert t["rows"] == expected and t["visible_rows"] == expected
    assert t["width"] > 400 and t["height"] > 20 * expected
    v = rendered["tables"]["variant-table"]  # r8 vs default: one row per (dataset, metric)
    assert v["rows"] == v["visible_rows"] == len(DATASETS) * len(METRICS)
    p = rendered["tables"]["promptcblue-table"]
    assert p["rows"] == p["visible_rows"] == len(TASKS) + 1


def test_every_chart_has_a_box_and_many_points(rendered):
    charts = [s for s in rendered["svgs"] if "chart" in s["classes"]]
    assert len(charts) == 2 * len(STAGES)  # loss + learning rate per stage
    for s in charts:
        assert s["width"] > 200 and s["height"] > 150, s
        assert s["polylines"] >= len(VARIANTS), s
        assert s["max_points"] >= 100, s
    loss = [s for s in charts if "loss" in s["classes"]]
    assert all(s["polylines"] == 2 * len(VARIANTS) for s in loss)  # train + eval per variant


def test_self_contained_and_no_errors(rendered):
    assert rendered["resources"] == []
    assert rendered["external_refs"] == []
    assert rendered["console_errors"] == []
    assert rendered["title"] == "tuneflow report"


def test_screenshot_is_not_blank(rendered):
    shot = rendered["screenshot"]
    assert shot["width"] >= 1000 and shot["height"] >= 2000  # full page, not just the viewport
    assert shot["distinct_colors"] > 50
    assert 0.02 < shot["non_background_fraction"] < 0.9


def test_empty_bundle_renders_in_browser(tmp_path):
    why = browser_missing()
    if why:
        skip_or_fail(why)
    page = write_report({}, tmp_path / "index.html")
    info = render_and_inspect(page, tmp_path / "empty.png")
    assert info["tables"] == {} and info["svgs"] == []
    assert info["console_errors"] == [] and info["resources"] == []
    assert info["screenshot"]["distinct_colors"] > 5

"""The benchmark scripts run (CPU, tiny shapes). They print numbers; nothing about speed is asserted here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from conftest import REPO, env_with_venv, shared_path


def _bench_train(*args):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--shape", "tiny", "--steps", "2",
                           "--warmup", "1", "--records", "64", "--vocab", "2000", "--eval-samples", "8", *args],
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_train_runs_every_path_on_cpu_with_a_tiny_shape():
    shared_path("stanford_alpaca", "alpaca_data.json.gz")
    paths = "baseline,tuneflow,qlora" if importlib.util.find_spec("bitsandbytes") else "baseline,tuneflow"
    out = _bench_train("--paths", paths)
    assert "seed-style" in out and "tuneflow SFT lora" in out and "ratio tuneflow SFT lora / seed-style" in out
    assert out.count("effective tokens/s") == len(paths.split(",")) and out.count("held-out loss") == len(paths.split(","))
    assert "[attn ran: sdpa]" in out  # attn_implementation auto on a CPU
    if "qlora" in paths:
        assert "tuneflow SFT qlora" in out


def test_bench_train_dense_rows_with_packing_have_no_padding():
    shared_path("stanford_alpaca", "alpaca_data.json.gz")
    out = _bench_train("--data-kind", "dense", "--max-length", "32", "--packing", "on")
    assert "dense data" in out
    tuneflow_line = out.split("tuneflow SFT lora")[1]
    padding = float(tuneflow_line.split("padding ")[1].split("%")[0])
    assert padding < 5.0, tuneflow_line  # random ids hit the pad id now and then, nothing more


def test_bench_data_plans_many_variants():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_data.py"), "--only", "plan", "--variants", "10"],
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan: snakemake -n with 10 variants" in proc.stdout


def test_bench_integrity_hashes_and_verifies_a_directory():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_integrity.py"), "--gb", "0.01", "--files", "2"],
                          capture_output=True, text=True, env=env_with_venv(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "manifest: 2 files" in proc.stdout and "verify:" in proc.stdout


def test_bench_data_scaling_table_runs_on_a_tiny_corpus(tmp_path):
    shared_path("stanford_alpaca", "alpaca_data.json.gz")
    shared_path("..", "tokenizers", "llama2", "tokenizer.json")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_data.py"), "--only", "scaling", "--sizes", "0.001",
                           "--kinds", "sft", "--workers", "1", "--work", str(tmp_path)],
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| SFT JSONL | 0.001 GB |")]
    assert [r.split(" | ")[2] for r in rows] == ["convert", "tokenize"] and all(" MB | " in r for r in rows), proc.stdout

"""The benchmark scripts run (CPU, tiny shapes). They print numbers; nothing about speed is asserted here."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, env_with_venv, shared_path


def test_bench_train_runs_both_paths_on_cpu_with_a_tiny_shape():
    shared_path("stanford_alpaca", "alpaca_data.json.gz")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_train.py"), "--shape", "tiny", "--steps", "2",
                           "--warmup", "1", "--records", "64", "--vocab", "2000"],
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "seed-style" in out and "tuneflow SFT" in out and "ratio tuneflow / seed-style" in out
    assert out.count("effective tokens/s") == 2 and "padding" in out


def test_bench_data_plans_many_variants():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_data.py"), "--only", "plan", "--variants", "10"],
                          capture_output=True, text=True, env=env_with_venv(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan: snakemake -n with 10 variants" in proc.stdout

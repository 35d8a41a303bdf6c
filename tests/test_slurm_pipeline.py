"""The demo pipeline on a real Slurm (2 nodes on localhost, fake GPUs) through the user-facing
profile: `snakemake --profile slurm` from the project root, plus the CI overrides."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, make_workdir
from pipeline import CI_CONFIG, train_info

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STAGES = ("pt", "sft", "dpo", "rm", "rl", "kto")
GPU_RULES = {*(f"train_{s}" for s in STAGES), "merge", "evaluate"}
CPU_RULES = {"tiny_model", "convert", "tokenize", "summarize", "report"}
SLURM_OVERLAY = "tests/config/ci-slurm.yaml"


def expected_gres():
    """Rule -> the TRES per node its jobs must have, read from the overlay's resources blocks."""
    cfg = yaml.safe_load((REPO / SLURM_OVERLAY).read_text())
    gpus = {f"train_{s}": cfg["stages"][s]["resources"]["gpus_per_node"] for s in STAGES}
    gpus["evaluate"] = cfg["evaluation"]["resources"]["gpus_per_node"]
    gpus["merge"] = min(1, *(gpus[f"train_{s}"] for s in STAGES))  # one device to merge on
    assert all(n >= 1 for n in gpus.values())
    return {rule: f"gres:gpu:{n}" for rule, n in gpus.items()}


def expected_merge_limits():
    """Stage -> (memory, time limit) of its merge job as scontrol shows them: merge_resources, else
    the stage's resources."""
    stages = yaml.safe_load((REPO / SLURM_OVERLAY).read_text())["stages"]
    out = {}
    for stage, block in stages.items():
        r = {**block["resources"], **block.get("merge_resources", {})}
        hours, minutes = divmod(r["runtime"], 60)
        out[stage] = (f"{r['mem_mb']}M", f"{hours:02d}:{minutes:02d}:00")
    assert len(set(out.values())) > 1, "the overlay should give one merge job limits of its own"
    return out


def test_demo_pipeline_runs_every_rule_as_a_slurm_job(slurm_cluster, tmp_path):
    from slurm_cluster import client_env, show_job

    project = make_workdir(tmp_path / "project")
    env = client_env(str(sys.executable).rsplit("/", 1)[0])  # jobs inherit PATH: this venv's python first
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--profile", "profiles/ci-slurm", "--verbose",
           "--configfile", CI_CONFIG, SLURM_OVERLAY]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=2400)
    log = proc.stdout + proc.stderr
    (project / "snakemake.out").write_text(log)
    assert proc.returncode == 0, log[-8000:] + "\n" + slurm_cluster.logs()

    planned = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", log.split("Job stats:")[1].split("\n\n")[0], re.M)}
    submitted, slurm_logs = {}, {}
    for job_id, path, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S*/rule_(\w+)/\S*)\)", log):
        submitted.setdefault(rule, []).append(job_id)
        slurm_logs[job_id] = path
    # Every rule but the `all` target ran as Slurm jobs, one per planned job.
    assert {r: len(ids) for r, ids in submitted.items()} == {r: n for r, n in planned.items() if r not in ("all", "total")}
    sbatch = {m.group(2): m.group(1) for m in re.finditer(r"sbatch call: (sbatch .*?--comment rule_(\w+) .*)", log)}
    gres = expected_gres()
    for rule, ids in submitted.items():
        for job_id in ids:
            job = show_job(job_id)
            assert job["JobState"] == "COMPLETED", (rule, job)
            assert ".snakemake/slurm_logs/" in slurm_logs[job_id] and Path(slurm_logs[job_id]).is_file()
            if rule in GPU_RULES:
                assert (job["Partition"], job["TresPerNode"], job["NumNodes"], job["NumTasks"]) == ("gpu", gres[rule], "1", "1"), (rule, job)
            else:
                assert rule in CPU_RULES and job["Partition"] == "cpu", (rule, job)
    merge_limits = {}
    for job_id in submitted["merge"]:
        job = show_job(job_id)
        # the plugin's comment: rule_merge_wildcards_<wildcard values joined by "_">, stage last
        stage = re.fullmatch(r"rule_merge_wildcards_.*_(pt|sft|dpo|rm|rl|kto)", job["Comment"]).group(1)
        merge_limits[stage] = (job["MinMemoryNode"], job["TimeLimit"])
    assert merge_limits == expected_merge_limits()
    for rule in (f"train_{s}" for s in STAGES):
        assert f"--gres={gres[rule].split(':', 1)[1]}" in sbatch[rule] and "--ntasks-per-gpu" not in sbatch[rule] and "--signal=TERM@" in sbatch[rule]

    # One rank per (fake) GPU, as the config says; the outputs are complete.
    for stage in STAGES:
        info = train_info(project / "results" / "adapters" / stage)
        assert info["world_size"] == int(gres[f"train_{stage}"].rsplit(":", 1)[1]) and info["deepspeed"] == "zero2"
        assert json.loads((project / "results" / "merged" / stage / "merge_check.json").read_text())["max_abs_diff"] is not None
    assert (project / "results" / "report" / "index.html").is_file()
    datasets = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]
    for model in ("base", "pt", "sft", "dpo"):
        for dataset in datasets:
            scores = json.loads((project / "results" / "eval" / model / f"{dataset}.json").read_text())
            assert scores["metrics"] and (project / "results" / "eval" / model / f"{dataset}.predictions.jsonl").is_file()
    assert (project / "results" / "eval" / "summary.tsv").read_text().count("\n") > 50

"""The workflow itself: the default DAG resolves, lint is clean, conda envs match the pins, the
config presets validate and dry-run."""

from __future__ import annotations

import re
import tomllib

import yaml

from conftest import REPO, snakemake


def test_default_target_dry_run_resolves(workdir):
    proc = snakemake(workdir, "-n", "--quiet", "rules")
    out = proc.stdout + proc.stderr
    for rule in ("tiny_model", "convert", "tokenize", "train_pt", "train_sft", "train_dpo", "merge", "evaluate",
                 "summarize", "report"):
        assert re.search(rf"^{rule}\s+\d+", out, re.M), out


def test_merged_sft_target_needs_no_dpo(workdir):
    out = snakemake(workdir, "results/merged/sft", "-n", "--quiet", "rules").stdout
    assert "train_sft" in out and "train_dpo" not in out and "evaluate" not in out


def test_merge_jobs_take_one_device_and_their_own_limits_where_set(workdir):
    """A merge job is one process on at most one GPU, with the stage's CPUs, memory and time unless
    stages.<stage>.merge_resources says otherwise."""
    (workdir / "overlay.yaml").write_text(yaml.safe_dump({"stages": {
        "sft": {"resources": {"nodes": 2, "gpus_per_node": 4, "mem_mb": 64000, "runtime": 600},
                "merge_resources": {"mem_mb": 200000, "runtime": 30}},
        "dpo": {"resources": {"gpus_per_node": 8, "mem_mb": 32000, "runtime": 300}}}}))
    out = snakemake(workdir, "-n", "-F", "results/merged/dpo", "--configfile", "config/config.yaml", "overlay.yaml").stdout
    merges = {}
    for block in out.split("\nrule ")[1:]:
        if block.startswith("merge:"):
            stage = re.search(r"wildcards: .*stage=(\w+)", block).group(1)
            merges[stage] = dict(re.findall(r"(\w+)=([^,\s]*)", re.search(r"resources: (.*)", block).group(1)))
    pick = ("nodes", "tasks", "gres", "mem_mb", "runtime")
    assert {stage: tuple(r[k] for k in pick) for stage, r in merges.items()} == {
        "pt": ("1", "1", "", "8000", "240"),             # a CPU stage with the default resources
        "sft": ("1", "1", "gpu:1", "200000", "30"),     # 2 nodes x 4 GPUs trained; merge_resources
        "dpo": ("1", "1", "gpu:1", "32000", "300"),     # the stage's memory and time
    }


def test_lint_has_no_warnings():
    proc = snakemake(REPO, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert "Lints for" not in out, out[-5000:]
    assert proc.returncode == 0, out[-3000:]


def _pins(requirements):
    return dict(re.match(r"^([A-Za-z0-9_.-]+)==(\S+)$", r).groups() for r in requirements if "==" in r)


def test_conda_envs_match_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {k.lower(): v for k, v in _pins(project["dependencies"]).items()}
    for env_file in sorted((REPO / "envs").glob("*.yaml")):
        env = yaml.safe_load(env_file.read_text())
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for name, version in _pins(pip).items():
            assert pins.get(name.lower()) == version, f"{env_file.name}: {name}=={version} but pyproject pins {pins.get(name.lower())}"


def test_every_rule_names_a_conda_env():
    rules = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    # `rule name:`, or `rule:` with a `name:` (the train_<stage> rules generated in a loop)
    assert len(re.findall(r"^\s*rule( \w+)?:$", rules, re.M)) == len(re.findall(r"^\s+conda:$", rules, re.M))
    for env in re.findall(r'conda:\n\s+"\.\./\.\./(envs/\w+\.yaml)"', rules):
        assert (REPO / env).is_file()

"""Shared fixtures: the repository, the shared public data, isolated copies of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent
# What a copy of the workflow needs (results/, logs/ and .snakemake/ are never copied).
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "scripts", "tuneflow", "resources", "profiles", "envs", "tests")


def skip_or_fail(why: str):
    """Skip a test that cannot run here, saying why; .ci/run sets TUNEFLOW_TESTS_REQUIRE_ALL=1 so
    that in CI (root, apt, ../shared/data present) such a test fails instead of passing unseen."""
    if os.environ.get("TUNEFLOW_TESTS_REQUIRE_ALL") == "1":
        pytest.fail(f"cannot run here, and TUNEFLOW_TESTS_REQUIRE_ALL=1 requires it: {why}")
    pytest.skip(why)


def shared_path(*parts) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"shared public data not found at {path} (expected ../shared/data beside the repository)")
    return path


FAKE_HF_TOKEN = "hf_tuneflowTestTokenNeverWritten0123456789"


def env_with_venv(extra=None) -> dict:
    """Environment for subprocesses: this interpreter's bin first on PATH (rules call `python`)."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    env.update(extra or {})
    return env


def make_workdir(dest: Path) -> Path:
    """Copy the workflow into `dest` (a fresh project directory with no results)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), symlinks=True)
        else:
            shutil.copy2(src, dest / name)
    for link in ("slurm", "local"):
        if (REPO / link).is_symlink():
            os.symlink(os.readlink(REPO / link), dest / link)
    return dest


def snakemake(workdir, *args, check=True, timeout=3600, env=None):
    cmd = [str(BIN / "snakemake"), *map(str, args)]
    proc = subprocess.run(cmd, cwd=workdir, env=env_with_venv(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        logs = ""
        for log in sorted(Path(workdir, "logs").rglob("*.log")) if Path(workdir, "logs").exists() else []:
            logs += f"\n--- {log}\n" + log.read_text(errors="replace")[-3000:]
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}{logs}")
    return proc


def files_under(path) -> list[str]:
    path = Path(path)
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(tmp_path / "project")


@pytest.fixture(scope="session")
def repo():
    return REPO


# A model small enough for unit tests; each test module overrides what it needs.
TINY_SETTINGS = {"vocab_size": 400, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
                 "num_kv_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """build(corpus=[files], **settings) -> the directory of a random-init tiny Llama with a BPE
    tokenizer trained on `corpus` (tuneflow.tiny_model), built once per distinct settings in the
    session and shared. Tests that change it work on a copy."""
    from tuneflow.tiny_model import build_tiny_model

    built = {}

    def build(corpus=("resources/demo/sft_alpaca.json",), seed=42, **settings):
        full = {**TINY_SETTINGS, **settings}
        key = repr((sorted(full.items()), list(map(str, corpus)), seed))
        if key not in built:
            out = tmp_path_factory.mktemp("tiny") / "model"
            build_tiny_model(full, [REPO / c for c in corpus], out, seed=seed)
            built[key] = out
        return built[key]

    return build


@pytest.fixture(scope="session")
def real_tokenizer():
    """name -> directory of a real tokenizer (llama2, qwen3, llama3_1, mistral): tests/real_tokenizers.py."""
    from real_tokenizers import tokenizer_dir

    return tokenizer_dir


@pytest.fixture(scope="session")
def family_model(tmp_path_factory, real_tokenizer):
    """name -> directory of a tiny random-init model of a real family with its real tokenizer
    (llama2, llama3_1, mistral, qwen3, mixtral: tests/model_families.py), built once per session."""
    from model_families import FAMILIES, build_family_model

    built = {}

    def build(name):
        if name not in built:
            built[name] = build_family_model(name, real_tokenizer(FAMILIES[name].tokenizer),
                                             tmp_path_factory.mktemp("family") / name)
        return built[name]

    return build


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The demo pipeline (tests/config/ci.yaml: 2 ranks, ZeRO-2) run once to the report; tests that
    change anything work on a copy (tests/pipeline.py: copy_project)."""
    workdir = make_workdir(tmp_path_factory.mktemp("demo") / "project")
    # A hub token in the environment, as on a user's machine: it must not end up in any output.
    snakemake(workdir, "--profile", "local", "--configfile", "tests/config/ci.yaml", env={"HF_TOKEN": FAKE_HF_TOKEN})
    return workdir


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real 2-node Slurm (slurmctld + two slurmd with fake GPUs, munge) on this host for the
    session; skipped with the reason when Slurm is not installed or we are not root."""
    from slurm_cluster import is_available, start_cluster, stop_cluster

    ok, why = is_available()
    if not ok:
        skip_or_fail(why)
    info = start_cluster(tmp_path_factory.mktemp("slurm"), nodes=2)
    try:
        yield info
    finally:
        stop_cluster(info)

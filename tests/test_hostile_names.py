"""Shell injection: every path and value that reaches a rule's shell command is quoted. The whole
pipeline (every rule: tiny_model, convert, tokenize, train_pt / train_sft / train_dpo, merge,
evaluate, summarize, report) runs on a tiny config in a project directory, data files and
tiny_model corpus whose names hold spaces, `$(...)`, backticks, `;`, both quotes and a newline:
the run must succeed and no command hidden in a name may run. (Dataset and variant names are
limited to letters, digits, '_', '-', '.' by the config; tests/test_badinput.py covers those.)"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO, files_under, make_workdir, snakemake

pytestmark = pytest.mark.badinput

HOSTILE = "x $(touch PWNED{n}) `touch PWNED{n}b`; touch PWNED{n}c 'q' \"dq\"\nnl"


def hostile(n: int, suffix: str) -> str:
    return HOSTILE.format(n=n) + suffix


def test_every_placeholder_of_every_rule_shell_command_is_quoted():
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.findall(r"^\s+shell:\n((?:\s+f?\".*\"\n?)+)", text, re.M):
            for placeholder in re.findall(r"\{([^{}]+)\}", block):
                assert placeholder.endswith(":q"), f"{smk.name}: {{{placeholder}}} reaches the shell unquoted"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """The pipeline run once in a project with hostile names (tmp root, project, Snakemake's output).
    A variant without SFT also trains DPO straight from the merged PT model."""
    root = tmp_path_factory.mktemp("hostile")
    project = make_workdir(root / hostile(0, " project"))
    data = project / hostile(1, " data")
    data.mkdir()
    demo = REPO / "resources" / "demo"
    text = data / hostile(2, ".txt")
    shutil.copy(demo / "pt_text.txt", text)
    alpaca = data / hostile(3, ".json")
    shutil.copy(demo / "sft_alpaca.json", alpaca)
    pairs = data / hostile(4, ".jsonl")
    shutil.copy(demo / "dpo_pairs.jsonl", pairs)
    tiny = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
            "num_kv_heads": 2, "max_position_embeddings": 128}
    training = {"max_steps": 2, "per_device_batch_size": 2, "max_length": 64, "logging_steps": 1, "save_steps": 100}
    config = {
        "seed": 1,
        "base_model": {"path": "results/models/tiny"},
        "tiny_model": {"corpus": [str(text.relative_to(project)), str(alpaca.relative_to(project))], **tiny},
        "chat_template": "chatml",
        "datasets": {
            "text": {"path": str(text.relative_to(project)), "format": "text", "stages": ["pt"]},
            "alpaca": {"path": str(alpaca), "format": "alpaca", "stages": ["sft"]},  # absolute: the project's name too
            "pairs": {"path": str(pairs.relative_to(project)), "format": "preference", "stages": ["dpo"]},
        },
        "stages": {"pt": {"enabled": True, "finetuning": "full", "training": training},
                   "sft": {"enabled": True, "finetuning": "lora", "training": training},
                   "dpo": {"enabled": True, "finetuning": "lora", "training": training}},
        "evaluation": {"max_samples": 2, "max_new_tokens": 2, "batch_size": 2},
        "variants": {"nosft": {"stages": {"sft": {"enabled": False}}, "evaluation": {"enabled": False}}},
    }
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    proc = snakemake(project, "-c2", "--printshellcmds", timeout=1800)
    return root, project, proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_pipeline_runs_with_hostile_names_in_every_path(hostile_run):
    root, project, out = hostile_run
    ran = set(re.findall(r"rule (\w+):", out))
    assert {"tiny_model", "convert", "tokenize", "train_pt", "train_sft", "train_dpo", "merge", "evaluate",
            "summarize", "report"} <= ran, sorted(ran)
    assert (project / "results" / "report" / "index.html").is_file()
    planted = [p for p in files_under(root) if Path(p).name.startswith("PWNED")]
    assert planted == [], f"a command hidden in a file name ran: {planted}"


@pytest.mark.slow
def test_dpo_without_sft_says_where_its_reference_comes_from(hostile_run):
    """Allowed (DPO straight on the merged PT model), but said when planning, in the job's log and
    in train_info.json rather than silently."""
    _, project, out = hostile_run
    assert ("tuneflow: note: variants.nosft.stages.sft.enabled is false, so DPO starts from the merged PT model and is "
            "scored against it as its reference") in out
    info = json.loads((project / "results" / "variants" / "nosft" / "adapters" / "dpo" / "train_info.json").read_text())
    assert info["reference_model"] == "results/merged/pt"
    assert info["reference_source"] == "the merged PT model (SFT is disabled)"
    log = (project / "logs" / "variants" / "nosft" / "train_dpo.log").read_text()
    assert "[tuneflow] reference model: results/merged/pt, the merged PT model (SFT is disabled)" in log
    default = json.loads((project / "results" / "adapters" / "dpo" / "train_info.json").read_text())
    assert default["reference_source"] == "the merged SFT model"

# Config validation and the plan of every output (tuneflow.plan), shared by all rules.

import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from tuneflow import config as tuneflow_config  # noqa: E402
from tuneflow.cluster import processes_per_node, rule_resources  # noqa: E402
from tuneflow.data.readers import resolve_paths  # noqa: E402
from tuneflow.errors import TuneflowError  # noqa: E402
from tuneflow.plan import TINY_MODEL_DIR, Plan, canonical  # noqa: E402

# Friendly errors first (unknown keys with suggestions, dotted key names), then Snakemake's own
# validation against the same schema.
try:
    RESOLVED = tuneflow_config.resolve(config)
except TuneflowError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
PLAN = Plan(RESOLVED)
TOKENIZE = PLAN.tokenize_registry()
SCRIPTS = os.path.join(workflow.basedir, "scripts")
SRC = workflow.basedir


wildcard_constraints:
    vprefix=r"(variants/[A-Za-z0-9_][A-Za-z0-9_.-]*/)?",
    stage=r"pt|sft|dpo",
    model=r"base|pt|sft|dpo",
    dataset=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
    key=r"(pt|sft|dpo)-[0-9a-f]{10}",


def code(*paths):
    """Source files a rule's results depend on: editing one reruns that rule (mtime trigger)."""
    return [os.path.join(SRC, p) for p in paths]


def variant(wildcards):
    return PLAN.variant_of_prefix(wildcards.vprefix)


def model_inputs(spec):
    """A local base model is an input (built by a rule or on disk); a hub name is not."""
    path = spec["path"]
    if path.startswith("results/") or os.path.isdir(path):
        return [path]
    return []


def tokenizer_inputs(spec):
    path = spec["path"]
    if path.startswith("results/"):
        return [path]
    if os.path.isdir(path):
        return [os.path.join(path, f) for f in os.listdir(path) if f.startswith("tokenizer") or f == "chat_template.jinja"]
    return []


def raw_files(dataset):
    spec = PLAN.convert_spec(dataset)
    try:
        return [str(p) for p in resolve_paths(spec["path"], key=f"datasets.{dataset}.path")]
    except TuneflowError as e:
        raise WorkflowError(str(e)) from None


def jsonarg(obj):
    return canonical(obj)


def stage_rule_resources(stage):
    """Snakemake resources of a training / merge rule, from stages.<stage>.resources."""
    def get(key, default=None):
        return lambda w: rule_resources(PLAN.stage_resources(variant(w), stage), gpu_rule=True).get(key, default)
    return get

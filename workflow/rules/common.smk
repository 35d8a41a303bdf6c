# Config validation, the plan of every output (tuneflow.plan), and the input / params / resources
# functions the rules use. Rules themselves live in the other .smk files.

import json
import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from tuneflow import config as tuneflow_config  # noqa: E402
from tuneflow.checks import preflight  # noqa: E402
from tuneflow.cluster import processes_per_node, rule_resources  # noqa: E402
from tuneflow.data.checksums import raw_checksums  # noqa: E402
from tuneflow.data.readers import resolve_paths  # noqa: E402
from tuneflow.errors import TuneflowError  # noqa: E402
from tuneflow.plan import Plan, canonical  # noqa: E402
from tuneflow.deepspeed_config import deepspeed_config_path  # noqa: E402
from tuneflow.stages import STAGE_NAMES, STAGES  # noqa: E402

# Friendly errors first (the config files themselves: duplicate keys, alias expansion; then
# unknown keys with suggestions, dotted key names), then Snakemake's own validation against the
# same schema.
try:
    for _configfile in workflow.configfiles:  # --configfile ones and the Snakefile's, as Snakemake read them
        tuneflow_config.check_config_file(_configfile)
    RESOLVED = tuneflow_config.resolve(config)
    preflight(RESOLVED)  # the config against a base model on local disk, before any job runs
except TuneflowError as e:
    raise WorkflowError(f"invalid configuration: {e}") from None
for _note in tuneflow_config.planning_notes(RESOLVED):
    print(f"tuneflow: note: {_note}", file=sys.stderr)
validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))
PLAN = Plan(RESOLVED)
TOKENIZE = PLAN.tokenize_registry()


wildcard_constraints:
    vprefix=r"(variants/[A-Za-z0-9_][A-Za-z0-9_.-]*/)?",
    stage="|".join(STAGE_NAMES),
    model="|".join(("base", *STAGE_NAMES)),
    dataset=r"[A-Za-z0-9_][A-Za-z0-9_.-]*",
    key=rf"({'|'.join(sorted({s.tokenized for s in STAGES.values()}))})-[0-9a-f]{{10}}",


def src(path):
    """A file of this repository (scripts and the tuneflow modules a rule runs), relative to the
    working directory so that a moved or copied project does not look changed to Snakemake."""
    return os.path.relpath(os.path.join(workflow.basedir, path))


def code(*paths):
    """Modules a rule's results depend on: editing one reruns that rule (mtime trigger)."""
    return [src(p) for p in paths]


def jsonarg(obj):
    return canonical(obj)


def variant(wildcards):
    return PLAN.variant_of_prefix(wildcards.vprefix)


def model_inputs(spec):
    """A model built by the workflow or on local disk is an input; a hub name is not."""
    path = spec["path"]
    return [path] if path.startswith("results/") or os.path.isdir(path) else []


def tokenizer_inputs(spec):
    path = spec["path"]
    if path.startswith("results/"):
        return [path]
    if os.path.isdir(path):
        return [os.path.join(path, f) for f in sorted(os.listdir(path)) if f.startswith("tokenizer") or f == "chat_template.jinja"]
    return []


def reward_inputs(paths):
    """What a stage's rewards read, as inputs: workflow outputs and what exists on local disk."""
    return [p for p in paths if p.startswith("results/") or os.path.exists(p)]


def raw_files(dataset):
    spec = PLAN.convert_settings(dataset)
    try:
        return [str(p) for p in resolve_paths(spec["path"], key=f"datasets.{dataset}.path")]
    except TuneflowError as e:
        raise WorkflowError(str(e)) from None


def length_warnings():
    """The tokenize jobs' warnings (more than data.truncation_warn_fraction of a dataset's records
    cut or dropped), from the meta.json of every tokenized directory this run uses."""
    found = []
    for v in PLAN.variant_names():
        for stage in PLAN.stages(v):
            for d in PLAN.tokenized_dirs(v, stage):
                meta = os.path.join(d, "meta.json")
                if os.path.isfile(meta):
                    with open(meta, encoding="utf-8") as f:
                        found += [w for w in json.load(f).get("warnings", []) if w not in found]
    return found


def raw_content(dataset):
    """The raw files' content hashes (a param of convert: a changed content reruns it whatever the
    files' mtimes say), unless data.checksum_raw_files is off."""
    if not RESOLVED["data"]["checksum_raw_files"]:
        return ""
    return jsonarg(raw_checksums(raw_files(dataset)))


# -- training -------------------------------------------------------------------------------------


def train_inputs(stage):
    def inputs(w):
        v = variant(w)
        deepspeed = deepspeed_config_path(PLAN.stage_own_settings(v, stage).get("deepspeed"))
        return {
            "launcher": src("scripts/launch.py"),
            "script": src("scripts/train.py"),
            "data": PLAN.tokenized_dirs(v, stage),
            "converted": PLAN.converted_dirs(v, stage),
            "base": model_inputs(PLAN.stage_base_spec(v, stage)),
            "code": code("tuneflow/launch.py", "tuneflow/distributed.py", "tuneflow/hardware.py", "tuneflow/models.py",
                         "tuneflow/lora_targets.py", "tuneflow/special_tokens.py", "tuneflow/train/setup.py",
                         "tuneflow/train/checkpoints.py", "tuneflow/train/outputs.py", STAGES[stage].recipe_file,
                         *(["tuneflow/rewards.py"] if STAGES[stage].rewards_key else [])),
            # reward models (the rm stage's merged model, a local one) and the modules of function rewards
            "rewards": reward_inputs(PLAN.reward_inputs(v, stage)),
            # editing the DeepSpeed JSON the stage uses reruns it
            "deepspeed": [os.path.relpath(deepspeed)] if deepspeed else [],
        }

    return inputs


def train_params(stage):
    return {
        "stage": stage,
        "settings": lambda w: jsonarg(PLAN.stage_settings(variant(w), stage)),
        "work": lambda w: PLAN.work_dir(variant(w), stage),
        "nproc": lambda w: processes_per_node(PLAN.stage_resources(variant(w), stage)),
        "manifests": lambda w, input: [f"{d}/manifest.json" for d in input.converted],
    }


def train_threads(stage):
    return lambda w: processes_per_node(PLAN.stage_resources(variant(w), stage))


# Every key tuneflow.cluster.rule_resources may return, with the value meaning "not set".
RESOURCE_KEYS = {"nodes": 1, "tasks": 1, "cpus_per_task": 1, "mem_mb": 1000, "runtime": 60, "gres": "",
                 "tasks_per_gpu": 0, "local_gpus": 0, "mpi": 0}


def resources_from(block_of):
    """Snakemake `resources:` (one function per key) from `block_of(wildcards)`, a config resources block."""
    def get(key, default):
        return lambda w: rule_resources(block_of(w), gpu_rule=True).get(key, default)

    return {k: get(k, d) for k, d in RESOURCE_KEYS.items()}


def data_resources():
    """convert / tokenize: data.resources (CPUs, memory, minutes), one task on one node, no GPU."""
    return rule_resources(RESOLVED["data"]["resources"], gpu_rule=False)


def data_threads():
    return RESOLVED["data"]["resources"]["cpus_per_task"]


def train_resources(stage):
    return resources_from(lambda w: PLAN.stage_resources(variant(w), stage))


def merge_resources():
    """Merging needs one device at most: one GPU when the stage trains on GPUs, else the CPU;
    stages.<stage>.merge_resources overrides the stage's CPUs, memory, time and that GPU."""
    def block(w):
        r = PLAN.stage_resources(variant(w), w.stage)
        merge = PLAN.vcfg(variant(w))["stages"][w.stage]["merge_resources"]
        return {**r, "nodes": 1, "gpus_per_node": min(1, r["gpus_per_node"]), "processes_per_node": 1, **merge}

    return resources_from(block)


# -- evaluation -----------------------------------------------------------------------------------


def eval_inputs(w):
    s = PLAN.eval_settings(variant(w), w.model)
    inputs = {
        "launcher": src("scripts/launch.py"),
        "script": src("scripts/evaluate.py"),
        "data": [f"results/data/{d}" for d in s["datasets"]],
        "model": model_inputs(s["model"]),
        "code": code("tuneflow/eval/evaluate.py", "tuneflow/eval/text_metrics.py", "tuneflow/eval/promptcblue.py",
                     "tuneflow/templates.py", "tuneflow/tokenize.py", "tuneflow/special_tokens.py", "tuneflow/models.py"),
    }
    if s.get("reference"):
        inputs["reference"] = model_inputs(s["reference"])
    if s.get("rewards"):
        inputs["rewards"] = reward_inputs([t.get("reward_model") or t["file"] for t in s["rewards"]["terms"]
                                           if "verifiable" not in t])
        inputs["code"].append(src("tuneflow/rewards.py"))
    return inputs


def eval_resources():
    return resources_from(lambda w: PLAN.vcfg(variant(w))["evaluation"]["resources"])


def eval_nproc(w):
    return processes_per_node(PLAN.vcfg(variant(w))["evaluation"]["resources"])


# -- report ---------------------------------------------------------------------------------------


def report_plan():
    return {
        "eval_jobs": [list(j) for j in PLAN.eval_jobs()],
        "trained": [list(t) for t in PLAN.trained_stages()],
        "tokenized": [list(t) for t in PLAN.tokenized_data()],
        "configs": PLAN.variants,
    }

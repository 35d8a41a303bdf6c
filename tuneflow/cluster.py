"""Map a stage's `resources:` block (workflow config) to the Snakemake resources of its rule.

The config says WHAT a stage needs ("SFT runs on 2 nodes x 8 GPUs"); the profile says WHERE
(partition, account, --signal; see profiles/slurm). This module is the only place that turns the
first into the resource names snakemake-executor-plugin-slurm 2.8 turns into sbatch options:

    config resources        Snakemake resource      sbatch option (plugin 2.8)
    nodes: N                nodes=N                 --nodes=N
    (one torchrun/node)     tasks=N                 --ntasks=N          (jobs without GPUs)
    gpus_per_node: G        gres="gpu:G"            --gres=gpu:G        (per node)
                            tasks_per_gpu=0         no --ntasks-per-gpu (see below)
    cpus_per_task: C        cpus_per_task=C         --cpus-per-task=C   (per torchrun = per node)
    mem_mb: M               mem_mb=M                --mem M             (per node)
    runtime: T (minutes)    runtime=T               -t T
                            local_gpus=N*G          nothing (local executor only)
                            mpi=0                   nothing; see "Job steps" below

We start ONE torchrun per node, which forks `processes_per_node` ranks; so Slurm sees one task
per node, and cpus_per_task / mem_mb are what that node's torchrun and all its ranks share
(cpus_per_task x tasks-per-node must fit a node). For a job with a GPU gres, the plugin turns
`tasks` (or `tasks_per_gpu`) into `--ntasks-per-gpu`, which would ask Slurm for one task PER GPU
(with `--cpus-per-task` each: 8 GPUs x C CPUs per node) and does not fit one torchrun per node.
`tasks_per_gpu=0` makes the plugin leave it out; with `--nodes=N` and no task count, sbatch gives
the job one task per node.

Job steps (GPU rules only). Inside the job the plugin normally runs the rule under
`srun -n1`, i.e. in a job step, and Slurm's `--signal=TERM@360` (profiles/slurm) goes to every
process of every step. For a multi-node job that step would hold the `srun` that scripts/launch.py
starts for the torchruns, and srun answers SIGTERM by SIGKILLing its tasks: no checkpoint.
`mpi` present (its value 0 keeps the plugin's sbatch line free of MPI options) makes the
slurm-jobstep plugin run the rule directly in the batch script; launch.py then puts torchrun
(one per node) into a step of its own, the only thing the signal reaches.

Under the LOCAL executor none of nodes/tasks/tasks_per_gpu/gres/cpus_per_task/mpi limit anything
(Snakemake only constrains resources named in `--resources`; threads limit cores), so local runs
are unaffected. `local_gpus` (a name the Slurm plugin and its job-step plugin ignore, unlike
`gpu`/`gpus`, which would add a conflicting --gpus) lets the local profile cap concurrent GPU jobs:
profiles/local sets `resources: local_gpus=1`, which Snakemake also uses to cap each job's value,
so GPU jobs run one at a time on a workstation (each sees all visible GPUs).
"""

from __future__ import annotations

from collections.abc import Mapping

# Defaults of workflow/schemas/config.schema.yaml#/$defs/resources (used when a block was not
# filled by tuneflow.config, e.g. in tests or a hand-written Snakefile).
DEFAULTS = {"nodes": 1, "gpus_per_node": 0, "processes_per_node": None, "cpus_per_task": 2,
            "mem_mb": 8000, "runtime": 240}


def _get_int(res: Mapping, key: str, minimum: int) -> int:
    value = res.get(key, DEFAULTS[key])
    if value is None:
        value = DEFAULTS[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"resources.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def gpus_per_node(res: Mapping, gpu_rule: bool = True) -> int:
    """GPUs per node the rule asks Slurm for (0 for CPU rules, whatever the block says)."""
    return _get_int(res, "gpus_per_node", 0) if gpu_rule else 0


def processes_per_node(res: Mapping, gpu_rule: bool = True) -> int:
    """Ranks torchrun starts on each node: the explicit value, else one per GPU, else 1."""
    explicit = res.get("processes_per_node")
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 1:
            raise ValueError(f"resources.processes_per_node must be null or an integer >= 1, got {explicit!r}")
        return explicit
    return gpus_per_node(res, gpu_rule) or 1


def rule_resources(res: Mapping | None, gpu_rule: bool) -> dict:
    """Snakemake `resources:` for a rule whose stage config block is `res` (see module docstring).

    Use in a Snakefile as `resources: **rule_resources(cfg["stages"]["sft"]["resources"], gpu_rule=True)`
    and `threads: r["cpus_per_task"]`, and start the job with
    `scripts/launch.py --nnodes {resources.nodes} --nproc-per-node <processes_per_node(res)>`.
    """
    res = {} if res is None else res
    unknown = set(res) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown resources key(s): {', '.join(sorted(unknown))}; expected {', '.join(DEFAULTS)}")
    nodes = _get_int(res, "nodes", 1)
    gpus = gpus_per_node(res, gpu_rule)
    processes_per_node(res, gpu_rule)  # validate
    out = {
        "nodes": nodes,
        "tasks": nodes,  # one torchrun per node
        "cpus_per_task": _get_int(res, "cpus_per_task", 1),
        "mem_mb": _get_int(res, "mem_mb", 1),
        "runtime": _get_int(res, "runtime", 1),
    }
    if gpu_rule:
        out["mpi"] = 0  # run the rule in the batch script (see "Job steps" above)
    if gpus:
        out["gres"] = f"gpu:{gpus}"
        out["tasks_per_gpu"] = 0  # keeps the plugin from adding --ntasks-per-gpu
        out["local_gpus"] = nodes * gpus
    return out

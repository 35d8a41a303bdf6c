# PT -> merge -> SFT -> merge -> DPO -> merge. Each training job runs scripts/train.py under
# torchrun (scripts/launch.py; srun + torchrun per node on a multi-node Slurm allocation) with the
# nodes / processes / GPUs of stages.<stage>.resources. Checkpoints live in results/work/ so a
# failed or preempted job resumes from them when it is rerun.


def train_inputs(stage):
    def inputs(w):
        v = variant(w)
        data = PLAN.tokenized_dirs(v, stage)
        datasets = [d.split("/")[2] for d in data]
        return {
            "data": data,
            "converted": [f"results/data/{d}" for d in datasets],
            "base": model_inputs(PLAN.stage_base_spec(v, stage)),
            "code": code("scripts/train.py", "scripts/launch.py", "tuneflow/launch.py", "tuneflow/train/common.py",
                         f"tuneflow/train/{stage}.py", "tuneflow/models.py"),
        }
    return inputs


def train_params(stage):
    return {
        "settings": lambda w: jsonarg(PLAN.stage_settings(variant(w), stage)),
        "work": lambda w: PLAN.work_dir(variant(w), stage),
        "nproc": lambda w: processes_per_node(PLAN.stage_resources(variant(w), stage)),
        "manifests": lambda w, input: [f"{d}/manifest.json" for d in input.converted],
    }


def train_threads(stage):
    return lambda w: processes_per_node(PLAN.stage_resources(variant(w), stage))


TRAIN_SHELL = (
    "python {SCRIPTS}/launch.py --nnodes {resources.nodes} --nproc-per-node {params.nproc}"
    " {SCRIPTS}/train.py {params.stage} --settings {params.settings:q} --data {input.data}"
    " --data-manifests {params.manifests} --output {output} --work-dir {params.work} > {log} 2>&1"
)

_pt = stage_rule_resources("pt")
_sft = stage_rule_resources("sft")
_dpo = stage_rule_resources("dpo")


rule train_pt:
    output:
        directory("results/{vprefix}adapters/pt"),
    input:
        unpack(train_inputs("pt")),
    params:
        stage="pt",
        **train_params("pt"),
    threads: train_threads("pt")
    resources:
        nodes=_pt("nodes"), tasks=_pt("tasks"), cpus_per_task=_pt("cpus_per_task"), mem_mb=_pt("mem_mb"),
        runtime=_pt("runtime"), gres=_pt("gres", ""), tasks_per_gpu=_pt("tasks_per_gpu", 0),
        local_gpus=_pt("local_gpus", 0),
    log:
        "logs/{vprefix}train_pt.log",
    shell:
        TRAIN_SHELL


rule train_sft:
    output:
        directory("results/{vprefix}adapters/sft"),
    input:
        unpack(train_inputs("sft")),
    params:
        stage="sft",
        **train_params("sft"),
    threads: train_threads("sft")
    resources:
        nodes=_sft("nodes"), tasks=_sft("tasks"), cpus_per_task=_sft("cpus_per_task"), mem_mb=_sft("mem_mb"),
        runtime=_sft("runtime"), gres=_sft("gres", ""), tasks_per_gpu=_sft("tasks_per_gpu", 0),
        local_gpus=_sft("local_gpus", 0),
    log:
        "logs/{vprefix}train_sft.log",
    shell:
        TRAIN_SHELL


rule train_dpo:
    output:
        directory("results/{vprefix}adapters/dpo"),
    input:
        unpack(train_inputs("dpo")),
    params:
        stage="dpo",
        **train_params("dpo"),
    threads: train_threads("dpo")
    resources:
        nodes=_dpo("nodes"), tasks=_dpo("tasks"), cpus_per_task=_dpo("cpus_per_task"), mem_mb=_dpo("mem_mb"),
        runtime=_dpo("runtime"), gres=_dpo("gres", ""), tasks_per_gpu=_dpo("tasks_per_gpu", 0),
        local_gpus=_dpo("local_gpus", 0),
    log:
        "logs/{vprefix}train_dpo.log",
    shell:
        TRAIN_SHELL


def merge_gpu(w):
    """Merging needs one device at most: one GPU when the stage trains on GPUs, else the CPU."""
    res = PLAN.stage_resources(variant(w), w.stage)
    return rule_resources({**res, "nodes": 1, "gpus_per_node": min(1, res["gpus_per_node"]), "processes_per_node": 1},
                          gpu_rule=True)


rule merge:
    output:
        directory("results/{vprefix}merged/{stage}"),
    input:
        adapter="results/{vprefix}adapters/{stage}",
        base=lambda w: model_inputs(PLAN.stage_base_spec(variant(w), w.stage)),
        code=code("scripts/merge.py", "tuneflow/merge.py"),
    params:
        base=lambda w: jsonarg(PLAN.stage_base_spec(variant(w), w.stage)),
        finetuning=lambda w: PLAN.stage_own_settings(variant(w), w.stage)["finetuning"],
    resources:
        mem_mb=lambda w: merge_gpu(w)["mem_mb"], runtime=lambda w: merge_gpu(w)["runtime"],
        cpus_per_task=lambda w: merge_gpu(w)["cpus_per_task"], gres=lambda w: merge_gpu(w).get("gres", ""),
        tasks_per_gpu=0, local_gpus=lambda w: merge_gpu(w).get("local_gpus", 0),
    log:
        "logs/{vprefix}merge_{stage}.log",
    shell:
        "python {SCRIPTS}/merge.py --base {params.base:q} --finetuning {params.finetuning}"
        " --adapter {input.adapter} --out {output} > {log} 2>&1"

# PT -> merge -> SFT -> merge -> DPO -> merge. Each training job runs scripts/train.py under
# torchrun (scripts/launch.py: srun + one torchrun per node on a multi-node Slurm allocation) with
# the nodes / processes / GPUs of stages.<stage>.resources. Checkpoints live in results/work/, so
# a failed or preempted job resumes from them when it runs again.


rule train_pt:
    output:
        directory("results/{vprefix}adapters/pt"),
    input:
        unpack(train_inputs("pt")),
    params:
        **train_params("pt"),
    threads: train_threads("pt")
    resources:
        **train_resources("pt"),
    log:
        "logs/{vprefix}train_pt.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.launcher} --nnodes {resources.nodes} --nproc-per-node {params.nproc}"
        " {input.script} {params.stage} --settings {params.settings:q} --data {input.data}"
        " --data-manifests {params.manifests} --output {output} --work-dir {params.work} > {log} 2>&1"


rule train_sft:
    output:
        directory("results/{vprefix}adapters/sft"),
    input:
        unpack(train_inputs("sft")),
    params:
        **train_params("sft"),
    threads: train_threads("sft")
    resources:
        **train_resources("sft"),
    log:
        "logs/{vprefix}train_sft.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.launcher} --nnodes {resources.nodes} --nproc-per-node {params.nproc}"
        " {input.script} {params.stage} --settings {params.settings:q} --data {input.data}"
        " --data-manifests {params.manifests} --output {output} --work-dir {params.work} > {log} 2>&1"


rule train_dpo:
    output:
        directory("results/{vprefix}adapters/dpo"),
    input:
        unpack(train_inputs("dpo")),
    params:
        **train_params("dpo"),
    threads: train_threads("dpo")
    resources:
        **train_resources("dpo"),
    log:
        "logs/{vprefix}train_dpo.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.launcher} --nnodes {resources.nodes} --nproc-per-node {params.nproc}"
        " {input.script} {params.stage} --settings {params.settings:q} --data {input.data}"
        " --data-manifests {params.manifests} --output {output} --work-dir {params.work} > {log} 2>&1"


rule merge:
    output:
        directory("results/{vprefix}merged/{stage}"),
    input:
        script=src("scripts/merge.py"),
        adapter="results/{vprefix}adapters/{stage}",
        base=lambda w: model_inputs(PLAN.stage_base_spec(variant(w), w.stage)),
        code=code("tuneflow/merge.py"),
    params:
        base=lambda w: jsonarg(PLAN.stage_base_spec(variant(w), w.stage)),
        finetuning=lambda w: PLAN.stage_own_settings(variant(w), w.stage)["finetuning"],
    resources:
        **merge_resources(),
    log:
        "logs/{vprefix}merge_{stage}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.script} --base {params.base:q} --finetuning {params.finetuning}"
        " --adapter {input.adapter} --out {output} > {log} 2>&1"

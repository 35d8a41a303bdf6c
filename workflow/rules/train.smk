# One train_<stage> rule per stage of tuneflow.stages (PT -> merge -> SFT -> merge -> {DPO, RM -> RL,
# KTO} -> merge, each stage starting from the merged model it names in the registry; RL also reads
# the merged reward model). Each training job runs
# scripts/train.py under torchrun (scripts/launch.py: srun + one torchrun per node on a multi-node
# Slurm allocation) with the nodes / processes / GPUs of stages.<stage>.resources. Checkpoints
# live in results/work/, so a failed or preempted job resumes from them when it runs again.


for _stage in STAGE_NAMES:

    rule:
        name:
            f"train_{_stage}"
        output:
            directory(f"results/{{vprefix}}adapters/{_stage}"),
        input:
            unpack(train_inputs(_stage)),
        params:
            **train_params(_stage),
        threads: train_threads(_stage)
        resources:
            **train_resources(_stage),
        log:
            f"logs/{{vprefix}}train_{_stage}.log",
        conda:
            "../../envs/train.yaml"
        shell:
            "python {input.launcher:q} --nnodes {resources.nodes:q} --nproc-per-node {params.nproc:q}"
            " {input.script:q} {params.stage:q} --settings {params.settings:q} --data {input.data:q}"
            " --data-manifests {params.manifests:q} --output {output:q} --work-dir {params.work:q} > {log:q} 2>&1"


rule merge:
    output:
        directory("results/{vprefix}merged/{stage}"),
    input:
        script=src("scripts/merge.py"),
        adapter="results/{vprefix}adapters/{stage}",
        base=lambda w: model_inputs(PLAN.stage_base_spec(variant(w), w.stage)),
        code=code("tuneflow/merge.py", "tuneflow/models.py"),
    params:
        settings=lambda w: jsonarg(PLAN.merge_settings(variant(w), w.stage)),
    resources:
        **merge_resources(),
    log:
        "logs/{vprefix}merge_{stage}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.script:q} --settings {params.settings:q} --adapter {input.adapter:q} --out {output:q} > {log:q} 2>&1"

# Every model the DAG produces (base, merged PT/SFT/DPO/RM/RL/KTO, per variant) on every evaluation
# dataset's validation split (a reward model on the preference pairs only; RL's reward scores RL,
# the model it starts from and its sibling branches); then one tidy table of all the numbers.


rule evaluate:
    output:
        directory("results/{vprefix}eval/{model}"),
    input:
        unpack(eval_inputs),
    params:
        settings=lambda w: jsonarg(PLAN.eval_settings(variant(w), w.model)),
        nproc=eval_nproc,
    threads: eval_nproc
    resources:
        **eval_resources(),
    log:
        "logs/{vprefix}eval_{model}.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "python {input.launcher:q} --nnodes {resources.nodes:q} --nproc-per-node {params.nproc:q}"
        " {input.script:q} model --settings {params.settings:q} --data {input.data:q}"
        " --out {output:q} > {log:q} 2>&1"


rule summarize:
    output:
        report(
            "results/eval/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
    input:
        script=src("scripts/summarize.py"),
        evals=PLAN.eval_dirs(),
        code=code("tuneflow/summarize.py"),
    params:
        jobs=jsonarg(PLAN.eval_jobs()),
    log:
        "logs/summarize.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python {input.script:q} --jobs {params.jobs:q} --out {output:q} > {log:q} 2>&1"

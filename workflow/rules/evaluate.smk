# Every model the DAG produces (base, merged PT/SFT/DPO, per variant) on every evaluation
# dataset's validation split; then one tidy table of all numbers.


def eval_variant(w):
    return PLAN.variant_of_prefix(w.vprefix)


def eval_inputs(w):
    v = eval_variant(w)
    s = PLAN.eval_settings(v, w.model)
    inputs = {"data": [f"results/data/{d}" for d in s["datasets"]], "model": model_inputs(s["model"]),
              "code": code("scripts/evaluate.py", "tuneflow/eval/evaluate.py", "tuneflow/eval/text_metrics.py",
                           "tuneflow/eval/promptcblue.py", "tuneflow/templates.py")}
    if s.get("reference"):
        inputs["reference"] = model_inputs(s["reference"])
    return inputs


def eval_resources(w):
    return rule_resources(PLAN.vcfg(eval_variant(w))["evaluation"]["resources"], gpu_rule=True)


rule evaluate:
    output:
        directory("results/{vprefix}eval/{model}"),
    input:
        unpack(eval_inputs),
    params:
        settings=lambda w: jsonarg(PLAN.eval_settings(eval_variant(w), w.model)),
        nproc=lambda w: processes_per_node(PLAN.vcfg(eval_variant(w))["evaluation"]["resources"]),
    threads: lambda w: processes_per_node(PLAN.vcfg(eval_variant(w))["evaluation"]["resources"])
    resources:
        nodes=lambda w: eval_resources(w)["nodes"], tasks=lambda w: eval_resources(w)["tasks"],
        cpus_per_task=lambda w: eval_resources(w)["cpus_per_task"], mem_mb=lambda w: eval_resources(w)["mem_mb"],
        runtime=lambda w: eval_resources(w)["runtime"], gres=lambda w: eval_resources(w).get("gres", ""),
        tasks_per_gpu=0, local_gpus=lambda w: eval_resources(w).get("local_gpus", 0),
    log:
        "logs/{vprefix}eval_{model}.log",
    shell:
        "python {SCRIPTS}/launch.py --nnodes {resources.nodes} --nproc-per-node {params.nproc}"
        " {SCRIPTS}/evaluate.py model --settings {params.settings:q} --data {input.data}"
        " --out {output} > {log} 2>&1"


rule summarize:
    output:
        report(
            "results/eval/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
    input:
        PLAN.eval_dirs(),
    params:
        jobs=jsonarg([job[:3] + (job[3],) for job in PLAN.eval_jobs()]),
    log:
        "logs/summarize.log",
    shell:
        "python {SCRIPTS}/summarize.py --jobs {params.jobs:q} --out {output} > {log} 2>&1"

# One self-contained HTML page: tables with deltas, loss curves, PromptCBLUE per task, config
# diff between variants, provenance. `snakemake --report report.zip` packages it with captions.

def report_plan():
    return {
        "eval_jobs": [list(j) for j in PLAN.eval_jobs()],
        "trained": [list(t) for t in PLAN.trained_stages()],
        "configs": PLAN.variants,
    }


rule report:
    output:
        html=report(
            "results/report/index.html",
            caption="../report/report.rst",
            category="Report",
        ),
        bundle="results/report/bundle.json",
    input:
        summary="results/eval/summary.tsv",
        evals=PLAN.eval_dirs(),
        adapters=[t[2] for t in PLAN.trained_stages()],
        code=code("scripts/report.py", "tuneflow/report.py", "tuneflow/summary.py"),
    params:
        plan=jsonarg(report_plan()),
    log:
        "logs/report.log",
    shell:
        "python {SCRIPTS}/report.py --summary {input.summary} --plan {params.plan:q}"
        " --bundle {output.bundle} --out {output.html} > {log} 2>&1"

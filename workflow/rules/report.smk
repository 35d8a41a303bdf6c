# One self-contained HTML page: tables with deltas, loss curves, PromptCBLUE per task, config
# differences between variants, provenance. `snakemake --report report.zip` adds the captions.


rule report:
    output:
        html=report(
            "results/report/index.html",
            caption="../report/report.rst",
            category="Report",
        ),
        bundle="results/report/bundle.json",
    input:
        script=src("scripts/report.py"),
        summary="results/eval/summary.tsv",
        evals=PLAN.eval_dirs(),
        adapters=[t[2] for t in PLAN.trained_stages()],
        tokenized=[t[2] for t in PLAN.tokenized_data()],
        code=code("tuneflow/report.py", "tuneflow/summarize.py"),
    params:
        plan=jsonarg(report_plan()),
    log:
        "logs/report.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python {input.script:q} --summary {input.summary:q} --plan {params.plan:q}"
        " --bundle {output.bundle:q} --out {output.html:q} > {log:q} 2>&1"

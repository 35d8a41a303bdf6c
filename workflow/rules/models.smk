# The embedded default base model (used when base_model.path is results/models/tiny).


rule tiny_model:
    output:
        directory("results/models/tiny"),
    input:
        corpus=RESOLVED["tiny_model"]["corpus"],
        code=code("scripts/make_tiny_model.py", "tuneflow/tiny_model.py"),
    params:
        settings=jsonarg(RESOLVED["tiny_model"]),
        seed=RESOLVED["seed"],
    log:
        "logs/tiny_model.log",
    shell:
        "python {SCRIPTS}/make_tiny_model.py --settings {params.settings:q} --seed {params.seed}"
        " --out {output} {input.corpus} > {log} 2>&1"

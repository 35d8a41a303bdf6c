# The embedded default base model (used when base_model.path is results/models/tiny).


rule tiny_model:
    output:
        directory("results/models/tiny"),
    input:
        script=src("scripts/tiny_model.py"),
        corpus=RESOLVED["tiny_model"]["corpus"],
        code=code("tuneflow/tiny_model.py"),
    params:
        settings=jsonarg(RESOLVED["tiny_model"]),
        seed=RESOLVED["seed"],
    log:
        "logs/tiny_model.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python {input.script:q} --settings {params.settings:q} --seed {params.seed:q}"
        " --out {output:q} {input.corpus:q} > {log:q} 2>&1"

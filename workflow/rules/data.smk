# Raw files -> canonical JSONL + manifest (per dataset) -> token ids (per tokenizer/template/length).


rule convert:
    output:
        directory("results/data/{dataset}"),
    input:
        script=src("scripts/convert.py"),
        raw=lambda w: raw_files(w.dataset),
        code=code("tuneflow/data/convert.py", "tuneflow/data/formats.py", "tuneflow/data/readers.py"),
    params:
        spec=lambda w: jsonarg(PLAN.convert_spec(w.dataset)),
    log:
        "logs/convert/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python {input.script} --spec {params.spec:q} --out {output} > {log} 2>&1"


rule tokenize:
    output:
        directory("results/tokenized/{dataset}/{key}"),
    input:
        script=src("scripts/tokenize_data.py"),
        data="results/data/{dataset}",
        tokenizer=lambda w: tokenizer_inputs(TOKENIZE[w.key]["model"]),
        code=code("tuneflow/tokenization.py", "tuneflow/templates.py"),
    params:
        kind=lambda w: TOKENIZE[w.key]["kind"],
        settings=lambda w: jsonarg({k: v for k, v in TOKENIZE[w.key].items() if k != "kind"}),
    log:
        "logs/tokenize/{dataset}/{key}.log",
    conda:
        "../../envs/data.yaml"
    shell:
        "python {input.script} --kind {params.kind} --data {input.data}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"

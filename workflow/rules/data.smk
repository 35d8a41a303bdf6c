# Raw files -> canonical JSONL + manifest (per dataset) -> token ids (per tokenizer/template/length).


rule convert:
    output:
        directory("results/data/{dataset}"),
    input:
        raw=lambda w: raw_files(w.dataset),
        code=code("scripts/convert.py", "tuneflow/data/convert.py", "tuneflow/data/formats.py", "tuneflow/data/readers.py"),
    params:
        spec=lambda w: jsonarg(PLAN.convert_spec(w.dataset)),
    log:
        "logs/convert/{dataset}.log",
    shell:
        "python {SCRIPTS}/convert.py --spec {params.spec:q} --out {output} > {log} 2>&1"


rule tokenize:
    output:
        directory("results/tokenized/{dataset}/{key}"),
    input:
        data="results/data/{dataset}",
        tokenizer=lambda w: tokenizer_inputs(TOKENIZE[w.key]["model"]),
        code=code("scripts/tokenize_data.py", "tuneflow/tokenization.py", "tuneflow/templates.py"),
    params:
        kind=lambda w: TOKENIZE[w.key]["kind"],
        settings=lambda w: jsonarg({k: v for k, v in TOKENIZE[w.key].items() if k != "kind"}),
    log:
        "logs/tokenize/{dataset}/{key}.log",
    shell:
        "python {SCRIPTS}/tokenize_data.py --kind {params.kind} --data {input.data}"
        " --settings {params.settings:q} --out {output} > {log} 2>&1"

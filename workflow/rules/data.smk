# Raw files -> canonical JSONL + manifest (per dataset) -> token ids (per tokenizer/template/length).


rule convert:
    output:
        directory("results/data/{dataset}"),
    input:
        script=src("scripts/convert.py"),
        raw=lambda w: raw_files(w.dataset),
        code=code("tuneflow/data/convert.py", "tuneflow/data/formats.py", "tuneflow/data/readers.py", "tuneflow/data/seen.py",
                  "tuneflow/parallel.py"),
    params:
        settings=lambda w: jsonarg(PLAN.convert_settings(w.dataset)),
        raw_content=lambda w: raw_content(w.dataset),
    log:
        "logs/convert/{dataset}.log",
    threads: data_threads()
    resources:
        **data_resources(),
    conda:
        "../../envs/data.yaml"
    shell:
        "python {input.script} --settings {params.settings:q} --out {output} --workers {threads} > {log} 2>&1"


rule tokenize:
    output:
        directory("results/tokenized/{dataset}/{key}"),
    input:
        script=src("scripts/tokenize_data.py"),
        data="results/data/{dataset}",
        tokenizer=lambda w: tokenizer_inputs(TOKENIZE[w.key]["model"]),
        code=code("tuneflow/tokenize.py", "tuneflow/templates.py", "tuneflow/parallel.py"),
    params:
        settings=lambda w: jsonarg(TOKENIZE[w.key]),
    log:
        "logs/tokenize/{dataset}/{key}.log",
    threads: data_threads()
    resources:
        **data_resources(),
    conda:
        "../../envs/data.yaml"
    shell:
        "python {input.script} --data {input.data} --settings {params.settings:q} --out {output} --workers {threads} > {log} 2>&1"

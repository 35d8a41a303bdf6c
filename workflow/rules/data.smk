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
        "python {input.script:q} --settings {params.settings:q} --out {output:q} --workers {threads:q} > {log:q} 2>&1"


rule tokenize:
    output:
        directory("results/tokenized/{dataset}/{key}"),
    input:
        script=src("scripts/tokenize_data.py"),
        data="results/data/{dataset}",
        tokenizer=lambda w: tokenizer_inputs(TOKENIZE[w.key]["model"]),
        code=code("tuneflow/tokenize.py", "tuneflow/templates.py", "tuneflow/special_tokens.py", "tuneflow/show_example.py",
                  "tuneflow/parallel.py"),
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
        "python {input.script:q} --data {input.data:q} --settings {params.settings:q} --out {output:q} --workers {threads:q} > {log:q} 2>&1"


onsuccess:
    # Said again at the end of the run, not only in logs/tokenize/: nothing is cut silently.
    for warning in length_warnings():
        print(f"tuneflow: WARNING: {warning} (see the report's data table)", file=sys.stderr)

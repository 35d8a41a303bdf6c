"""Data as users of LLaMA-Factory and MedicalGPT bring it: the dataset_info.json registry, tool
calls, alpaca / comparison / conversational preference shapes, bad turns, JSON lines in a .txt,
null answer choices, column typos, duplicates, splits that depend on the record alone and keep
translations together, and raw files edited with their mtime restored."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO, shared_path, snakemake
from tuneflow import config as tuneflow_config
from tuneflow.data.convert import convert_dataset
from tuneflow.errors import ConfigError, DataError, ModelError
from tuneflow.io import read_jsonl
from tuneflow.plan import Plan

DEMO = REPO / "resources" / "demo"


def spec(path, fmt, **kw):
    return {"name": "ds", "path": str(path), "format": fmt, "validation_fraction": 0.0, "split_seed": 7,
            "on_bad_record": "error", **kw}


def convert(tmp_path, path, fmt, out="ds", **kw):
    manifest = convert_dataset(spec(path, fmt, **kw), tmp_path / "results" / "data" / out)
    d = tmp_path / "results" / "data" / out
    return manifest, read_jsonl(d / "train.jsonl") + read_jsonl(d / "validation.jsonl")


def jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# -- LLaMA-Factory's dataset_info.json ------------------------------------------------------------------

REGISTRY = {
    "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
    "dpo_en_demo": {"file_name": "dpo_en_demo.json", "formatting": "sharegpt", "ranking": True,
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}},
    "c4_demo": {"file_name": "c4_demo.jsonl", "columns": {"prompt": "text"}},
    "wiki_demo": {"file_name": "wiki_demo.txt", "columns": {"prompt": "text"}},
    "toolcall_dpo": {"file_name": "toolcall_dpo_zh_demo.jsonl", "formatting": "sharegpt", "ranking": True,
                     "columns": {"messages": "conversations", "tools": "tools", "chosen": "chosen", "rejected": "rejected"}},
    "openai_chat": {"file_name": "openai.jsonl", "formatting": "sharegpt", "columns": {"messages": "messages"},
                    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                             "system_tag": "system"}},
    "alpaca_gpt4_hub": {"hf_hub_url": "llamafactory/alpaca_gpt4_en"},
}


@pytest.fixture
def llamafactory_data(tmp_path):
    """A LLaMA-Factory data/ folder: its registry and the shared demo files it names."""
    data = tmp_path / "lf_data"
    data.mkdir()
    shared = {"alpaca_en_demo.json": "llama_factory_demo/alpaca_en_demo.json.gz",
              "dpo_en_demo.json": "llama_factory_demo/dpo_en_demo.json.gz",
              "c4_demo.jsonl": "llama_factory_demo/c4_demo.jsonl.gz", "wiki_demo.txt": "llama_factory_demo/wiki_demo.txt.gz"}
    for name, rel in shared.items():  # LLaMA-Factory keeps them uncompressed
        (data / name).write_bytes(gzip.decompress(shared_path(*rel.split("/")).read_bytes()))
    os.symlink(shared_path("medicalgpt", "reward", "toolcall_dpo_zh_demo.jsonl"), data / "toolcall_dpo_zh_demo.jsonl")
    jsonl(data / "openai.jsonl", [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                                {"role": "assistant", "content": "a"}]}])
    (data / "dataset_info.json").write_text(json.dumps(REGISTRY), encoding="utf-8")
    return data


def resolved(datasets: dict, **extra) -> dict:
    raw = {"base_model": {"path": "results/models/tiny"}, "datasets": datasets, **extra}
    return tuneflow_config.resolve(raw)


def test_a_llamafactory_data_folder_is_read_by_entry_name(tmp_path, llamafactory_data):
    """The entries convert as the same files do with tuneflow's own formats: same records, counts."""
    cases = {"alpaca_en_demo": ("sft", "alpaca", {}), "dpo_en_demo": ("dpo", "preference", {}),
             "c4_demo": ("pt", "text", {}), "wiki_demo": ("pt", "text", {})}
    cfg = resolved({name: {"path": str(llamafactory_data), "format": "llamafactory", "dataset": name, "stages": [stage]}
                    for name, (stage, _, _) in cases.items()})
    plan = Plan(cfg)
    for name, (_, fmt, columns) in cases.items():
        settings = plan.convert_settings(name)
        assert settings["format"] == fmt and settings["llamafactory"]["dataset"] == name
        m = convert_dataset(settings, tmp_path / "via_registry" / name)
        direct = convert_dataset({**settings, "llamafactory": None}, tmp_path / "direct" / name)
        assert m["counts"] == direct["counts"] and m["counts"]["kept"] > 0, name
        assert (tmp_path / "via_registry" / name / "train.jsonl").read_bytes() == \
            (tmp_path / "direct" / name / "train.jsonl").read_bytes()
        assert m["llamafactory"]["registry"].endswith("dataset_info.json")
    # OpenAI-style messages through the entry's tags
    cfg = resolved({"chat": {"path": str(llamafactory_data / "dataset_info.json"), "format": "llamafactory",
                             "dataset": "openai_chat", "stages": ["sft"]}})
    convert_dataset(Plan(cfg).convert_settings("chat"), tmp_path / "chat")
    rows = read_jsonl(tmp_path / "chat" / "train.jsonl") + read_jsonl(tmp_path / "chat" / "validation.jsonl")
    assert rows[0]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "q"},
                                   {"role": "assistant", "content": "a"}]


def test_llamafactory_entries_that_cannot_be_read_are_refused_naming_the_key(llamafactory_data):
    def refused(ds, match):
        with pytest.raises(ConfigError, match=match):
            resolved({"x": {"stages": ["sft"], **ds}})

    refused({"path": str(llamafactory_data), "format": "llamafactory", "dataset": "alpaca_en_dmeo"},
            r"datasets.x.dataset.*'alpaca_en_dmeo' is not in .*dataset_info.json; did you mean 'alpaca_en_demo'")
    refused({"path": str(llamafactory_data), "format": "llamafactory", "dataset": "alpaca_gpt4_hub"},
            r"read from hf_hub_url .*local files only")
    # today's misreading: the folder given as data would read dataset_info.json as a data file
    refused({"path": str(llamafactory_data), "format": "alpaca"},
            r"datasets.x.path.*holds LLaMA-Factory's dataset_info.json: set datasets.x.format: llamafactory")
    with pytest.raises(ConfigError, match=r"format 'preference' \(LLaMA-Factory entry 'dpo_en_demo'\) cannot feed stage 'sft'"):
        resolved({"x": {"path": str(llamafactory_data), "format": "llamafactory", "dataset": "dpo_en_demo",
                        "stages": ["sft"]}})


def test_the_workflow_plans_a_llamafactory_dataset_on_its_file(workdir, llamafactory_data):
    overlay = {"datasets": {"demo_alpaca": {"path": str(llamafactory_data), "format": "llamafactory",
                                            "dataset": "alpaca_en_demo", "stages": ["sft", "rl"]}}}
    (workdir / "lf.yaml").write_text(yaml.safe_dump(overlay))
    out = snakemake(workdir, "-n", "-p", "results/data/demo_alpaca", "--configfile", "config/config.yaml", "lf.yaml").stdout
    assert f"input: scripts/convert.py, {llamafactory_data / 'alpaca_en_demo.json'}" in out, out


# -- tool calls ----------------------------------------------------------------------------------------

GLAIVE_STYLE = {  # LLaMA-Factory's tool-call SFT shape (glaive_toolcall)
    "conversations": [
        {"from": "human", "value": "What is the weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": json.dumps({"temperature": 21})},
        {"from": "gpt", "value": "It is 21 degrees in Paris."}],
    "tools": json.dumps([{"name": "get_weather", "description": "Weather of a city",
                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]),
}


def test_tool_calls_and_tools_are_carried_into_the_canonical_schema(tmp_path):
    """All 11 pairs of MedicalGPT's tool-call demo (4 were refused, the other 7 lost their tools)."""
    m, rows = convert(tmp_path, shared_path("medicalgpt", "reward", "toolcall_dpo_zh_demo.jsonl"), "preference")
    assert m["counts"]["read"] == m["counts"]["kept"] == 11
    assert all(r["tools"][0]["type"] == "function" and r["tools"][0]["function"]["name"] for r in rows)
    with_calls = [r for r in rows if len(r["messages"]) == 3]
    assert len(with_calls) == 4
    for r in with_calls:
        call, result = r["messages"][1], r["messages"][2]
        assert call["role"] == "assistant" and call["tool_calls"][0]["function"]["name"] in json.dumps(r["tools"])
        assert isinstance(call["tool_calls"][0]["function"]["arguments"], dict) and result["role"] == "tool"
    weather = next(r for r in rows if r["messages"] == [{"role": "user", "content": "北京今天天气怎么样？"}])
    assert weather["chosen"] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]}
    assert weather["rejected"] == "北京今天天气晴朗，气温大约25度。"
    _, sft = convert(tmp_path, jsonl(tmp_path / "glaive.jsonl", [GLAIVE_STYLE]), "sharegpt", out="sft")
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert sft[0]["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert sft[0]["tools"][0]["function"]["name"] == "get_weather"


def test_tool_calls_are_rendered_by_a_template_with_tool_support(tmp_path, real_tokenizer):
    from transformers import AutoTokenizer

    from tuneflow.tokenize import IGNORE, tokenize_split

    tok = AutoTokenizer.from_pretrained(real_tokenizer("qwen3"))  # Qwen3's own template renders tools
    _, pairs = convert(tmp_path, shared_path("medicalgpt", "reward", "toolcall_dpo_zh_demo.jsonl"), "preference")
    rows, stats = tokenize_split(pairs, tok, {"kind": "dpo", "max_length": 4096, "chat_template": "tokenizer"})
    assert stats["records"] == len(rows) == 11
    weather = rows[[r["messages"] for r in pairs].index([{"role": "user", "content": "北京今天天气怎么样？"}])]
    assert "<tools>" in tok.decode(weather["prompt_ids"]) and '"get_weather"' in tok.decode(weather["prompt_ids"])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>' in tok.decode(weather["chosen_ids"])
    single_call = {**GLAIVE_STYLE, "conversations": GLAIVE_STYLE["conversations"][:2]}  # the answer is the call
    _, sft = convert(tmp_path, jsonl(tmp_path / "call.jsonl", [single_call]), "sharegpt", out="sft")
    rows, _ = tokenize_split(sft, tok, {"kind": "sft", "max_length": 4096, "mask_prompt": True, "chat_template": "tokenizer"})
    trained = tok.decode([t for t, lab in zip(rows[0]["input_ids"], rows[0]["labels"]) if lab != IGNORE])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in trained
    assert "Weather of a city" not in trained  # the tool definitions are prompt, not target


def test_tool_call_data_is_refused_with_a_template_without_tool_support(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from tuneflow.templates import BUILTIN
    from tuneflow.tokenize import tokenize_dataset

    tok = AutoTokenizer.from_pretrained(tiny_model())
    tok.chat_template = BUILTIN["chatml"]
    convert_dataset(spec(jsonl(tmp_path / "glaive.jsonl", [GLAIVE_STYLE]), "sharegpt"), tmp_path / "data")
    with pytest.raises(ModelError, match=r"data: records carry tool calls or tool definitions \(the first: id '\w+'\), "
                                         r"but the chat template \(chat_template: chatml\) does not render tools"):
        tokenize_dataset(tmp_path / "data", tok, {"kind": "sft", "max_length": 64, "chat_template": "chatml"}, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


# -- preference shapes ---------------------------------------------------------------------------------

SUM = {"instruction": "Answer the question.", "input": "What is the sum of 2 + 6?", "chosen": "8", "rejected": "7"}


@pytest.mark.parametrize("columns", [{}, {"prompt": "instruction"}], ids=["alpaca-columns", "prompt-mapped-to-instruction"])
def test_alpaca_preference_pairs_keep_their_input(tmp_path, columns):
    _, rows = convert(tmp_path, jsonl(tmp_path / "p.jsonl", [SUM]), "preference", columns=columns)
    assert rows[0]["messages"] == [{"role": "user", "content": "Answer the question.\nWhat is the sum of 2 + 6?"}]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("8", "7")


def test_comparison_and_conversational_preference_shapes(tmp_path):
    user = {"role": "user", "content": "2 + 6?"}
    records = [
        {"instruction": "2 + 6?", "input": "", "output": ["8", "7"]},                      # LLaMA-Factory comparison data
        {"chosen": [user, {"role": "assistant", "content": "8"}],                          # TRL conversational,
         "rejected": [user, {"role": "assistant", "content": "7"}]},                       # implicit prompt
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "8"}],              # TRL conversational,
         "rejected": [{"role": "assistant", "content": "7"}]},                             # explicit prompt
    ]
    for i, rec in enumerate(records):
        _, rows = convert(tmp_path, jsonl(tmp_path / f"p{i}.jsonl", [rec]), "preference", out=f"p{i}")
        assert (rows[0]["messages"], rows[0]["chosen"], rows[0]["rejected"]) == ([user], "8", "7"), rec


# -- bad turns -----------------------------------------------------------------------------------------

BAD_TURNS = [
    {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
                       {"from": "system", "value": "late system"}, {"from": "human", "value": "q2"},
                       {"from": "gpt", "value": "a2"}]},
    {"conversations": [{"from": "gpt", "value": "Hello! How can I help?"}, {"from": "human", "value": "q"},
                       {"from": "gpt", "value": "a"}]},
    {"conversations": [{"from": "human", "value": "q3"}, {"from": "gpt", "value": "a3"}, {"from": "human", "value": "thanks"}]},
    {"conversations": [{"from": "human", "value": "fine"}, {"from": "gpt", "value": "record"}]},
]


def test_on_bad_turn_drops_the_turn_the_record_or_stops(tmp_path):
    f = jsonl(tmp_path / "s.jsonl", BAD_TURNS)
    m, rows = convert(tmp_path, f, "sharegpt", out="turn", on_bad_turn="drop_turn")
    assert m["counts"]["kept"] == 4 and m["counts"]["dropped_turns"] == 3
    assert m["dropped_turn_reasons"] == {"system turn after the conversation started": 1,
                                         "conversation opens with an assistant turn": 1,
                                         "conversation ends with a user turn": 1}
    assert {e["line"] for e in m["dropped_turn_examples"]} == {1, 2, 3}
    by_first = {r["messages"][0]["content"]: [x["content"] for x in r["messages"]] for r in rows}
    assert by_first == {"q1": ["q1", "a1", "q2", "a2"], "q": ["q", "a"], "q3": ["q3", "a3"], "fine": ["fine", "record"]}
    m, rows = convert(tmp_path, f, "sharegpt", out="record", on_bad_turn="drop_record")  # on_bad_record: error
    assert (m["counts"]["kept"], m["counts"]["dropped"]) == (1, 3)
    with pytest.raises(DataError, match=r"s.jsonl, line 1: conversations\[2\] is a system turn after the conversation "
                                        r"started \(set data.on_bad_turn: drop_turn"):
        convert(tmp_path, f, "sharegpt", out="error", on_bad_turn="error", on_bad_record="skip")


def test_on_bad_turn_drop_turn_keeps_medicalgpt_conversations_that_end_on_a_human_turn(tmp_path):
    """7 of them end on a human turn: 6 are kept without it; one is that human turn alone (line 781)."""
    path = shared_path("medicalgpt", "sft", "sharegpt_zh_1K_format.jsonl.gz")
    m, _ = convert(tmp_path, path, "sharegpt", on_bad_record="skip")
    assert (m["counts"]["kept"], m["dropped_reasons"]["field 'conversations' must end with a gpt turn"]) == (992, 7)
    m, _ = convert(tmp_path, path, "sharegpt", out="drop_turn", on_bad_record="skip", on_bad_turn="drop_turn")
    assert (m["counts"]["kept"], m["counts"]["dropped"], m["counts"]["dropped_turns"]) == (998, 2, 6)
    assert m["dropped_reasons"] == {"conversations[2] (human) is empty": 1, "field 'conversations' must end with a gpt turn": 1}


# -- small things that lost or leaked data -------------------------------------------------------------


def test_json_lines_in_a_txt_file_read_as_text_are_warned_about(tmp_path, capfd):
    path = shared_path("medicalgpt", "rag", "medical_corpus.txt")
    m, rows = convert(tmp_path, path, "text")
    assert len(m["warnings"]) == 1 and "87 of its first 87 lines are JSON objects (keys: 问, 答)" in m["warnings"][0]
    assert "set datasets.ds.columns: {text: <key>}" in m["warnings"][0]
    assert "tuneflow: warning: " in capfd.readouterr().err
    m, rows = convert(tmp_path, path, "text", out="answers", columns={"text": "答"})
    assert m["warnings"] == [] and rows[0]["text"] == "食管克罗恩病"


def test_answer_choices_null_stays_null(tmp_path):
    task = {"task_dataset": "CMeEE-V2"}
    recs = [{"input": "q1", "target": "a", "answer_choices": None, "sample_id": "1", **task},
            {"input": "q2", "target": "a", "answer_choices": ["a", "b"], "sample_id": "2", **task},
            {"input": "q3", "target": "a", "sample_id": "3", **task}]
    _, rows = convert(tmp_path, jsonl(tmp_path / "p.jsonl", recs), "promptcblue")
    assert {r["id"]: r["meta"]["answer_choices"] for r in rows} == {"1": None, "2": ["a", "b"], "3": []}


def test_a_columns_typo_names_the_canonical_field_the_source_column_and_the_record_keys(tmp_path):
    path = shared_path("open_chinese_alpaca", "alpaca-chinese-52k-v3.json.gz")
    with pytest.raises(DataError) as e:
        convert(tmp_path, path, "alpaca", columns={"instruction": "zh_instructon", "input": "zh_input", "output": "zh_output"})
    assert "record 0: missing field 'zh_instructon' (columns maps instruction to 'zh_instructon'; the record has: " \
           "en_input, en_instruction, en_output, metadata, zh_input, zh_instruction, zh_output); did you mean " \
           "'zh_instruction'?" in str(e.value)


def test_exact_and_normalized_duplicates_are_dropped_and_counted(tmp_path):
    recs = [{"instruction": "Add.", "input": "1 + 2", "output": "3"}, {"instruction": "Add.", "input": "1 + 2", "output": "3"},
            {"instruction": "add. ", "input": "1  +  2", "output": "3"}, {"instruction": "Sub.", "input": "2 - 1", "output": "1"}]
    f = jsonl(tmp_path / "a.jsonl", recs)
    kept = {}
    for mode in ("exact", "normalized", "none"):
        m, rows = convert(tmp_path, f, "alpaca", out=mode, **({} if mode == "exact" else {"dedupe": mode}))
        kept[mode] = (m["counts"]["kept"], m["counts"]["duplicates"], [e["line"] for e in m["duplicate_examples"]])
        assert m["dedupe"] == mode and len(rows) == m["counts"]["kept"]
    assert kept == {"exact": (3, 1, [2]), "normalized": (2, 2, [2, 3]), "none": (4, 0, [])}


def test_the_split_depends_on_the_record_not_on_the_dataset_system_prompt(tmp_path):
    splits = []
    for i, system in enumerate((None, "You are a helpful assistant.")):
        convert(tmp_path, DEMO / "sft_alpaca.json", "alpaca", out=f"s{i}", system=system, validation_fraction=0.2)
        d = tmp_path / "results" / "data" / f"s{i}"
        splits.append({r["id"] for r in read_jsonl(d / "validation.jsonl")})
        if system:
            assert all(r["messages"][0] == {"role": "system", "content": system} for r in read_jsonl(d / "train.jsonl"))
    assert splits[0] == splits[1] and len(splits[0]) > 20


def test_group_by_keeps_translations_on_one_side_of_the_split(tmp_path):
    """The bilingual Alpaca as two datasets (English, Chinese columns of the same records): with
    group_by, no English validation record has its translation in Chinese train."""
    records = json.loads(gzip.decompress(shared_path("open_chinese_alpaca", "alpaca-chinese-52k-v3.json.gz").read_bytes()))
    # 4000 records whose answers are unique in each language, so an answer tells which record it is
    count = {lg: Counter(r[f"{lg}_output"] for r in records) for lg in ("en", "zh")}
    records = [r for r in records if count["en"][r["en_output"]] == count["zh"][r["zh_output"]] == 1
               and r["en_output"].strip() and r["zh_output"].strip()][:4000]
    subset = tmp_path / "bilingual.json"
    subset.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    lang = {lg: {"instruction": f"{lg}_instruction", "input": f"{lg}_input", "output": f"{lg}_output"} for lg in ("en", "zh")}

    def leaks(**group):
        sides = {}
        for lg in ("en", "zh"):
            m, _ = convert(tmp_path, subset, "alpaca", out=f"{lg}{group}", columns=lang[lg], validation_fraction=0.05,
                           dedupe="none", on_bad_record="skip", **group)
            d = tmp_path / "results" / "data" / f"{lg}{group}"
            sides[lg] = {split: [r["messages"][-1]["content"] for r in read_jsonl(d / f"{split}.jsonl")]
                         for split in ("train", "validation")}
        zh_of = {r["en_output"]: r["zh_output"] for r in records}
        zh_train = set(sides["zh"]["train"])
        return sum(zh_of[en] in zh_train for en in sides["en"]["validation"]), len(sides["en"]["validation"])

    leaked, n = leaks()
    assert n > 100 and leaked > 0.8 * n  # each language split on its own: translations leak
    for group_by in ("record_index", "en_instruction"):
        leaked, n = leaks(group_by=group_by)
        assert leaked == 0 and n > 100, group_by


@pytest.mark.slow
def test_a_raw_file_edited_with_its_mtime_restored_is_converted_again(demo_run, tmp_path):
    from pipeline import copy_project, planned_jobs

    project = copy_project(demo_run, tmp_path / "project")
    raw = project / "resources" / "demo" / "dpo_pairs.jsonl"
    stat = raw.stat()
    text = raw.read_text(encoding="utf-8")
    raw.write_text(text.replace('"rejected": "', '"rejected": "?', 1), encoding="utf-8")
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p`, rsync or a checkout can leave it
    assert raw.stat().st_mtime_ns == stat.st_mtime_ns and raw.read_text(encoding="utf-8") != text
    jobs = planned_jobs(project)
    assert ("convert", "results/data/demo_pairs") in jobs and ("train_dpo", "results/adapters/dpo") in jobs
    assert not any(j[1].startswith(("results/data/demo_alpaca", "results/adapters/sft")) for j in jobs)

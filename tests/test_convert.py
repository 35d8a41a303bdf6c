"""Every raw format converts to the canonical schema; the real public data converts with the
expected counts; the split is deterministic and stable when records are added."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest

from conftest import shared_path
from tuneflow.data.convert import convert_dataset, is_validation
from tuneflow.io import read_jsonl


def spec(path, fmt, **kw):
    return {"name": "ds", "path": str(path), "format": fmt, "validation_fraction": 0.0, "split_seed": 7,
            "on_bad_record": "error", **kw}


def convert(tmp_path, path, fmt, **kw):
    out = tmp_path / "results" / "data" / "ds"
    manifest = convert_dataset(spec(path, fmt, **kw), out)
    rows = read_jsonl(out / "train.jsonl") + read_jsonl(out / "validation.jsonl")
    return manifest, rows


def write(path: Path, text: str, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


# -- each raw format ------------------------------------------------------------------------------


def test_alpaca_json_array_with_system_and_history(tmp_path):
    f = write(tmp_path / "a.json", json.dumps([
        {"instruction": "Add.", "input": "1 + 2", "output": "3", "system": "Be brief.", "history": [["hi", "hello"]]},
        {"instruction": "Say hi.", "output": "hi"},
    ]))
    m, rows = convert(tmp_path, f, "alpaca")
    assert m["counts"]["kept"] == 2
    by_answer = {r["messages"][-1]["content"]: r for r in rows}
    assert by_answer["3"]["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "Add.\n1 + 2"},
        {"role": "assistant", "content": "3"}]
    assert by_answer["hi"]["messages"] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


def test_alpaca_json_lines_and_bilingual_column_mapping(tmp_path):
    f = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"en_instruction": "Add.", "en_input": "", "en_output": "3", "zh_instruction": "加法。", "zh_input": "", "zh_output": "三"},
    ]) + "\n")
    m, rows = convert(tmp_path, f, "alpaca", columns={"instruction": "zh_instruction", "input": "zh_input", "output": "zh_output"})
    assert rows[0]["messages"] == [{"role": "user", "content": "加法。"}, {"role": "assistant", "content": "三"}]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_promptcblue_with_any_line_ending(tmp_path, newline):
    recs = [{"input": f"问题{i}\n答：", "target": "是", "answer_choices": ["是", "否"], "type": "cls",
             "task_dataset": "CHIP-STS", "sample_id": f"s{i}"} for i in range(5)]
    f = write(tmp_path / "p.json", newline.join(json.dumps(r, ensure_ascii=False) for r in recs) + newline)
    m, rows = convert(tmp_path, f, "promptcblue")
    assert m["counts"]["read"] == 5 and m["counts"]["kept"] == 5
    r = next(r for r in rows if r["id"] == "s3")
    assert r["meta"] == {"sample_id": "s3", "task_type": "cls", "task_dataset": "CHIP-STS", "answer_choices": ["是", "否"]}
    assert r["messages"][0]["content"] == "问题3\n答："


def test_sharegpt_multi_turn(tmp_path):
    conv = [{"from": "system", "value": "S"}, {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]
    f = write(tmp_path / "s.jsonl", json.dumps({"conversations": conv}) + "\n")
    _, rows = convert(tmp_path, f, "sharegpt")
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_text_lines_and_jsonl_and_gzip(tmp_path):
    f = write(tmp_path / "t.txt", "first line\n\nsecond line\r\nthird\n")
    m, rows = convert(tmp_path, f, "text")
    assert m["counts"]["read"] == 3 and sorted(r["text"] for r in rows) == ["first line", "second line", "third"]
    g = tmp_path / "c.jsonl.gz"
    with gzip.open(g, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"content": "doc one"}) + "\n" + json.dumps({"content": "doc two"}) + "\n")
    m, rows = convert(tmp_path, g, "text", columns={"text": "content"})
    assert sorted(r["text"] for r in rows) == ["doc one", "doc two"]


def test_preference_all_shapes(tmp_path):
    shapes = [
        {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
         "rejected": {"from": "gpt", "value": "bad"}},                                           # (a)
        {"conversations": [{"from": "human", "value": "q"}], "chosen": "good", "rejected": "bad"},  # (b)
        {"system": "S", "history": [["h1", "a1"]], "question": "q", "response_chosen": "good", "response_rejected": "bad"},  # (c)
        {"question": "q", "response_chosen": "good", "response_rejected": "bad"},                 # (d)
        {"prompt": "q", "chosen": "good", "rejected": "bad"},                                     # (e)
    ]
    out = []
    for i, rec in enumerate(shapes):
        f = write(tmp_path / f"p{i}.json", json.dumps([rec]))
        _, rows = convert(tmp_path, f, "preference")
        out.append(rows[0])
    for r in out:
        assert r["chosen"] == "good" and r["rejected"] == "bad" and r["messages"][-1] == {"role": "user", "content": "q"}
    assert out[2]["messages"][:3] == [{"role": "system", "content": "S"}, {"role": "user", "content": "h1"},
                                      {"role": "assistant", "content": "a1"}]


def test_unpaired_examples_in_both_shapes(tmp_path):
    f = write(tmp_path / "u.jsonl", "\n".join(json.dumps(r) for r in [
        {"prompt": "q", "completion": "good", "label": True},
        {"conversations": [{"from": "human", "value": "q"}], "completion": {"from": "gpt", "value": "bad"}, "label": False},
    ]) + "\n")
    _, rows = convert(tmp_path, f, "unpaired")
    assert [(r["messages"], r["completion"], r["label"]) for r in rows] == [
        ([{"role": "user", "content": "q"}], "good", True), ([{"role": "user", "content": "q"}], "bad", False)]
    bad = write(tmp_path / "b.jsonl", json.dumps({"prompt": "q", "completion": "x", "label": "yes"}) + "\n")
    with pytest.raises(Exception, match=r"b\.jsonl, line 1: field 'label' must be true \(desirable\) or false"):
        convert(tmp_path, bad, "unpaired")


def test_bom_is_stripped_and_noted(tmp_path):
    f = tmp_path / "bom.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "i", "output": "o"}]).encode())
    m, rows = convert(tmp_path, f, "alpaca")
    assert len(rows) == 1 and m["sources"][0]["notes"] == ["UTF-8 byte-order mark stripped"]


def test_directory_and_glob_inputs_are_read_in_sorted_order(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    for name in ("b.txt", "a.txt"):
        write(d / name, f"{name} text\n")
    m, _ = convert(tmp_path, d, "text")
    assert [Path(s["path"]).name for s in m["sources"]] == ["a.txt", "b.txt"]
    m, _ = convert(tmp_path, tmp_path / "raw" / "*.txt", "text")
    assert m["counts"]["read"] == 2


def test_skip_mode_counts_drops_with_reasons(tmp_path):
    f = write(tmp_path / "a.jsonl", "\n".join([
        json.dumps({"instruction": "i", "output": "o"}),
        json.dumps({"instruction": "i", "output": ""}),
        json.dumps({"instruction": 5, "output": "o"}),
        "{not json",
    ]) + "\n")
    with pytest.raises(Exception):
        convert(tmp_path, f, "alpaca")
    # a JSON syntax error is never skipped: the file itself is broken
    f2 = write(tmp_path / "b.jsonl", "\n".join([json.dumps({"instruction": "i", "output": "o"}),
                                                  json.dumps({"instruction": "i", "output": ""}),
                                                  json.dumps({"instruction": 5, "output": "o"})]) + "\n")
    m, rows = convert(tmp_path, f2, "alpaca", on_bad_record="skip")
    assert m["counts"] == {"read": 3, "kept": 1, "dropped": 2, "duplicates": 0, "dropped_turns": 0, "over_max_records": 0,
                           "renamed_ids": 0, "train": m["counts"]["train"], "validation": m["counts"]["validation"]}
    assert m["dropped_reasons"] == {"field 'output' is empty": 1, "field 'instruction' must be str, got int": 1}
    assert {e["line"] for e in m["drop_examples"]} == {2, 3}


def test_duplicate_ids_can_be_renamed(tmp_path):
    recs = [{"input": f"q{i}", "target": "a", "sample_id": "same", "task_dataset": "MedDG"} for i in range(3)]
    f = write(tmp_path / "p.jsonl", "\n".join(json.dumps(r) for r in recs) + "\n")
    m, rows = convert(tmp_path, f, "promptcblue", duplicate_ids="rename")
    ids = {r["input"]: r["id"] for r in (json_row_input(r) for r in rows)}
    assert ids["q0"] == "same" and re.fullmatch(r"same#[0-9a-f]{8}", ids["q1"]) and re.fullmatch(r"same#[0-9a-f]{8}", ids["q2"])
    assert len(set(ids.values())) == 3 and m["counts"]["renamed_ids"] == 2
    # a record inserted before them changes neither their ids nor so their split keys
    g = write(tmp_path / "q.jsonl", "\n".join(json.dumps(r) for r in [{**recs[0], "input": "new"}, *recs]) + "\n")
    _, again = convert(tmp_path / "again", g, "promptcblue", duplicate_ids="rename")
    again_ids = {r["input"]: r["id"] for r in (json_row_input(r) for r in again)}
    assert again_ids["q1"] == ids["q1"] and again_ids["q2"] == ids["q2"]
    # the same content under the same id twice: a duplicate (dedupe: exact), or, kept, a third id
    h = write(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in [recs[0], recs[1], recs[1]]) + "\n")
    m, twins = convert(tmp_path / "twins", h, "promptcblue", duplicate_ids="rename")
    assert len({r["id"] for r in twins}) == 2 and m["counts"]["duplicates"] == 1
    _, twins = convert(tmp_path / "kept", h, "promptcblue", duplicate_ids="rename", dedupe="none")
    assert len({r["id"] for r in twins}) == 3


def json_row_input(row):
    """{'input': the user's text, 'id': the record's id} of a converted PromptCBLUE row."""
    return {"input": row["messages"][0]["content"], "id": row["id"]}


# -- deterministic split --------------------------------------------------------------------------


def test_split_is_deterministic_and_stable_when_records_are_added(tmp_path):
    recs = [{"instruction": f"task {i}", "output": str(i)} for i in range(200)]
    f = write(tmp_path / "a.json", json.dumps(recs))
    convert(tmp_path, f, "alpaca", validation_fraction=0.2)
    out = tmp_path / "results" / "data" / "ds"
    first_val = {r["id"] for r in read_jsonl(out / "validation.jsonl")}
    first_bytes = (out / "train.jsonl").read_bytes()
    convert(tmp_path, f, "alpaca", validation_fraction=0.2)
    assert (out / "train.jsonl").read_bytes() == first_bytes
    f2 = write(tmp_path / "b.json", json.dumps(recs + [{"instruction": f"new {i}", "output": "x"} for i in range(100)]))
    convert(tmp_path, f2, "alpaca", validation_fraction=0.2)
    second_val = {r["id"] for r in read_jsonl(out / "validation.jsonl")}
    assert first_val <= second_val  # old records stay where they were
    assert 0.1 < len(first_val) / 200 < 0.3


def test_split_hash_depends_on_seed():
    keys = [f"id:{i}" for i in range(1000)]
    a = {k for k in keys if is_validation(k, 1, 0.1)}
    b = {k for k in keys if is_validation(k, 2, 0.1)}
    assert a != b and 60 < len(a) < 140


# -- the real public data in ../shared/data -------------------------------------------------------

# (file, format, column mapping, records read, records kept with on_bad_record: skip, exact duplicates dropped)
SHARED_CASES = [
    ("stanford_alpaca/alpaca_data.json.gz", "alpaca", {}, 51502, 51474, 0),  # 28 empty outputs
    ("open_chinese_alpaca/alpaca-chinese-52k-v3.json.gz", "alpaca",
     {"instruction": "zh_instruction", "input": "zh_input", "output": "zh_output"}, 51502, 51451, 1),
    ("carbonz0_alpaca_chinese/zh-data-part-00.json.gz", "alpaca", {}, 10021, 10014, 1),
    ("carbonz0_alpaca_chinese/zh-data-part-01.json.gz", "alpaca", {}, 10444, 10439, 0),
    ("llama_factory_demo/alpaca_en_demo.json.gz", "alpaca", {}, 999, 985, 14),
    ("llama_factory_demo/alpaca_zh_demo.json", "alpaca", {}, 1000, 992, 8),
    ("medicalgpt/legacy/finetune/Belle_open_source_1k.json", "alpaca", {}, 1000, 1000, 0),
    ("medicalgpt/rag/medical_corpus.txt", "alpaca", {"instruction": "问", "output": "答"}, 87, 87, 0),
    ("llama_factory_demo/dpo_en_demo.json.gz", "preference", {}, 300, 295, 5),      # shape (a)
    ("llama_factory_demo/dpo_zh_demo.json.gz", "preference", {}, 300, 289, 11),     # shape (a)
    ("medicalgpt/reward/dpo_zh_500.jsonl.gz", "preference", {}, 500, 500, 0),       # shape (b)
    ("medicalgpt/legacy/reward/dpo_zh.jsonl.gz", "preference", {}, 429, 429, 0),    # shape (c)
    ("medicalgpt/legacy/reward/test.json", "preference", {}, 100, 100, 0),          # shape (d)
    ("medicalgpt/sft/medical_sft_1K_format.jsonl.gz", "sharegpt", {}, 1000, 1000, 0),
    ("medicalgpt/sft/sharegpt_zh_1K_format.jsonl.gz", "sharegpt", {}, 1000, 992, 0),  # 7 end on a human turn, 1 empty turn
    ("llama_factory_demo/c4_demo.jsonl.gz", "text", {}, 300, 300, 0),
    ("llama_factory_demo/wiki_demo.txt.gz", "text", {}, 30, 30, 0),
    ("medicalgpt/pretrain/en_article_tail500.txt", "text", {}, 426, 426, 0),
    ("promptcblue/toy_examples/train.json", "promptcblue", {}, 72, 72, 0),
    ("promptcblue/toy_examples/dev.json", "promptcblue", {}, 72, 72, 0),
]


@pytest.mark.parametrize("rel,fmt,columns,read,kept,duplicates", SHARED_CASES, ids=[c[0] for c in SHARED_CASES])
def test_shared_data_converts_with_expected_counts(tmp_path, rel, fmt, columns, read, kept, duplicates):
    path = shared_path(*rel.split("/"))
    m, rows = convert(tmp_path, path, fmt, columns=columns, on_bad_record="skip", validation_fraction=0.05)
    assert m["counts"]["read"] == read
    assert m["counts"]["kept"] == kept
    assert m["counts"]["duplicates"] == duplicates
    assert m["counts"]["dropped"] == read - kept - duplicates
    assert m["counts"]["train"] + m["counts"]["validation"] == kept == len(rows)
    assert m["sources"][0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # of the file as stored (.gz too)
    assert m["split"]["seed"] == 7 and m["split"]["validation_fraction"] == 0.05


# per task file of the we1k PromptCBLUE data: records (README) and how many reuse a sample_id
WE1K = {"CHIP-CDEE-1588.json.gz": 1427, "CHIP-CDN-2000.json.gz": 1791, "CHIP-CDN-500.json": 459,
        "CHIP-CTC-822.json.gz": 739, "CHIP-MDCFNPC-1000.json.gz": 900, "CHIP-STS-2502.json": 1839,
        "CMeEE-1000.json": 900, "CMeIE-2000.json.gz": 1799, "IMCS-MRG-1000.json.gz": 896,
        "IMCS-NER-1000.json": 899, "KUAKE-IR-1866.json.gz": 1682, "KUAKE-IR-500.json": 445,
        "KUAKE-QIC-1100.json": 990, "KUAKE-QTR-1000.json": 899, "STS_2000.json": 1807}


@pytest.mark.parametrize("name,read", sorted(WE1K.items()))
def test_we1k_promptcblue_files_with_cr_crlf_and_reused_ids(tmp_path, name, read):
    path = shared_path("promptcblue_aug_we1k", name)
    m, rows = convert(tmp_path, path, "promptcblue", on_bad_record="skip", duplicate_ids="rename")
    assert m["counts"]["read"] == read
    empty_targets = m["dropped_reasons"].get("field 'target' is empty", 0)
    assert m["counts"]["kept"] == read - empty_targets  # every record kept, reused ids renamed
    assert len({r["id"] for r in rows}) == len(rows)


def test_shared_promptcblue_test_split_without_targets_is_refused(tmp_path):
    path = shared_path("promptcblue", "toy_examples", "test.json")
    with pytest.raises(Exception, match=r"line 1: field 'target' is empty"):
        convert(tmp_path, path, "promptcblue")


def test_keep_linebreaks_keeps_every_line_as_written_blank_lines_included(tmp_path):
    """MedicalGPT's pretraining reads text files line by line keeping the line breaks."""
    (tmp_path / "src").mkdir()
    src = write(tmp_path / "src" / "pt.txt", "first line\n\nsecond\r\nlast")
    manifest, rows = convert(tmp_path / "kept", src, "text", keep_linebreaks=True)
    assert [r["text"] for r in rows] == ["first line\n", "\n", "second\r\n", "last"]
    assert manifest["keep_linebreaks"] is True
    _, rows = convert(tmp_path / "plain", src, "text")
    assert [r["text"] for r in rows] == ["first line", "second", "last"]


def test_a_held_out_dataset_is_all_validation_data(tmp_path):
    src = write(tmp_path / "dev.jsonl", "".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n" for i in range(20)))
    manifest = convert_dataset(spec(src, "alpaca", held_out=True), tmp_path / "out")
    assert (len(read_jsonl(tmp_path / "out" / "train.jsonl")), len(read_jsonl(tmp_path / "out" / "validation.jsonl"))) == (0, 20)
    assert manifest["held_out"] is True and manifest["counts"]["train"] == 0

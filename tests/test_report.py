"""tuneflow.report on synthetic bundles: deltas, colouring, config diff, empty sections, escaping,
charts and the atomic write."""

import html
import json
import os
import re
from html.parser import HTMLParser

import pytest

from tuneflow import report
from tuneflow.report import (
    MISSING, config_diff, delta_class, flatten_config, fmt_num, line_chart, nice_ticks,
    pivot_summary, render_html, series, stage_deltas, variant_deltas, write_report,
)


def row(model, metric, value, variant="default", dataset="ds"):
    return {"model": model, "stage": model, "variant": variant, "dataset": dataset,
            "metric": metric, "value": value}


def small_bundle(**over):
    b = {
        "title": "t", "generated_at": "2026-11-23T18:00:00Z",
        "summary": [row("base", "rougeL", 10.0), row("pt", "rougeL", 11.0), row("sft", "rougeL", 12.5),
                    row("dpo", "rougeL", 12.0),
                    row("base", "eval_loss", 2.0), row("sft", "eval_loss", 1.5), row("dpo", "eval_loss", 1.75),
                    row("sft", "rougeL", 13.0, variant="r8"), row("base", "rougeL", 10.0, variant="r8"),
                    row("sft", "eval_loss", 1.25, variant="r8")],
        "metric_direction": {"eval_loss": "lower", "perplexity": "lower"},
        "training": [{"variant": "default", "stage": "sft", "finetuning": "lora",
                      "log": [{"step": s, "loss": 3 - s / 100, "learning_rate": 1e-4, "eval_loss": None}
                              for s in range(10, 110, 10)],
                      "info": {"wall_time_s": 12.0, "steps": 100}}],
        "promptcblue": [{"variant": "default", "model": "sft", "dataset": "pc", "overall": 55.2,
                         "tasks": {"KUAKE-QIC": {"primary": "macro_f1", "score": 80.1},
                                   "CMeEE-V2": {"primary": "micro_f1", "score": 30.3}}}],
        "configs": {"default": {"lora": {"r": 16, "alpha": 32}, "sft": {"lr": 2e-4}},
                    "r8": {"lora": {"r": 8, "alpha": 32}, "sft": {"lr": 2e-4}}},
        "provenance": {"git_commit": "abc123", "git_dirty": True, "packages": {"torch": "2.13.0"},
                       "hardware": {"cpu": "x", "gpus": [], "hostname": "h"},
                       "data": [{"dataset": "ds", "files": [{"path": "a.json", "sha256": "f" * 64}],
                                 "kept": 349, "dropped": 2}],
                       "wall_time": [{"variant": "default", "stage": "sft", "seconds": 81.2}]},
    }
    b.update(over)
    return b


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.attrs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(page):
    c = _Collector()
    c.feed(page)
    c.close()
    return c


# --------------------------------------------------------------------------- deltas

def test_stage_deltas_hand_numbers():
    d = stage_deltas({"base": 10.0, "pt": 11.0, "sft": 12.5, "dpo": 12.0, "rl": 13.0})
    assert d == {"PT − base": 1.0, "SFT − base": 2.5, "DPO − SFT": -0.5, "RL − SFT": 0.5, "KTO − SFT": None}
    assert "RM − base" not in d  # the reward model is compared with nothing (its own metrics)
    d = stage_deltas({"base": 2.0, "sft": 1.5})
    assert d["SFT − base"] == -0.5 and d["PT − base"] is None and d["DPO − SFT"] is None
    assert stage_deltas({"base": None, "sft": 1.0})["SFT − base"] is None
    assert stage_deltas({"base": float("nan"), "sft": 1.0})["SFT − base"] is None


def test_pivot_summary_last_row_wins_and_missing_values():
    p = pivot_summary([row("sft", "m", 1.0), row("sft", "m", 2.0), row("base", "m", None),
                       {"model": "sft", "metric": "m", "value": 3.0}])  # no variant/dataset
    assert p[("default", "ds", "m")] == {"sft": 2.0, "base": None}
    assert p[("default", "", "m")] == {"sft": 3.0}


def test_variant_deltas_hand_numbers():
    rows = variant_deltas(small_bundle()["summary"])
    got = {(r["variant"], r["model"], r["metric"]): r["delta"] for r in rows}
    assert got == {("r8", "base", "rougeL"): 0.0, ("r8", "sft", "rougeL"): 0.5,
                   ("r8", "sft", "eval_loss"): -0.25}
    assert all(r["default"] is not None and r["value"] is not None for r in rows)
    assert variant_deltas([row("sft", "m", 1.0, variant="x")]) == []  # no default to compare to


def test_delta_class_follows_metric_direction():
    dirs = {"eval_loss": "lower", "perplexity": "lower"}
    assert delta_class("rougeL", 2.5, dirs) == "good"
    assert delta_class("rougeL", -0.5, dirs) == "bad"
    assert delta_class("eval_loss", -0.5, dirs) == "good"
    assert delta_class("eval_loss", 0.25, dirs) == "bad"
    assert delta_class("perplexity", -3, dirs) == "good"
    assert delta_class("brand_new_metric", 1.0, dirs) == "good"  # default: higher is better
    assert delta_class("rougeL", 0.0, dirs) == "same"
    assert delta_class("rougeL", None, dirs) == "na"
    assert delta_class("eval_loss", -1.0, {}) == "bad"  # bundle says nothing: higher is better


def table_rows(page, table_id):
    """[(class, text)] of the <td>s of each body row of the table with `table_id`."""
    t = page[page.index(f'id="{table_id}"'):]
    t = t[t.index("<tbody>"):t.index("</table>")]
    return [re.findall(r'<td(?: class="([^"]*)")?[^>]*>([^<]*)</td>', r)
            for r in re.findall(r"<tr[^>]*>(.*?)</tr>", t)]


def test_summary_table_shows_colour_coded_deltas():
    page = render_html(small_bundle())
    rows = {(r[0][1], r[2][1]): r for r in table_rows(page, "summary-table")}
    # columns: variant dataset metric dir | base pt sft dpo | PT-base SFT-base DPO-SFT
    rouge = rows[("default", "rougeL")]
    assert [t for _, t in rouge[4:8]] == ["10.00", "11.00", "12.50", "12.00"]
    assert rouge[8] == ("num delta good", "▲ +1.000")
    assert rouge[9] == ("num delta good", "▲ +2.500")
    assert rouge[10] == ("num delta bad", "▼ -0.500")
    loss = rows[("default", "eval_loss")]  # lower is better
    assert loss[3][1] == "↓" and rouge[3][1] == "↑"
    assert loss[5] == ("num missing", "—") and loss[8] == ("num delta missing", "—")
    assert loss[9] == ("num delta good", "▼ -0.500")
    assert loss[10] == ("num delta bad", "▲ +0.250")
    # variant vs default: columns variant dataset metric dir | base sft (models r8 shares)
    vrows = {(r[0][1], r[2][1]): r for r in table_rows(page, "variant-table")}
    assert vrows[("r8", "rougeL")][4] == ("num delta same", "±0")
    assert vrows[("r8", "rougeL")][5] == ("num delta good", "▲ +0.500")
    assert vrows[("r8", "eval_loss")][4] == ("num delta missing", "—")  # r8 has no base eval_loss
    assert vrows[("r8", "eval_loss")][5] == ("num delta good", "▼ -0.250")
    summary = page[page.index('id="summary-table"'):]
    summary = summary[:summary.index("</table>")]
    assert summary.count("<tr") == 1 + 4  # header + (default | r8) x (rougeL, eval_loss)
    # model columns in pipeline order
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", summary)
    assert heads[4:8] == ["base", "pt", "sft", "dpo"]


def test_model_columns_only_those_present():
    page = render_html(small_bundle(summary=[row("base", "bleu4", 1.0), row("sft", "bleu4", 3.0)]))
    summary = page[page.index('id="summary-table"'):]
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", summary[:summary.index("</thead>")])
    assert heads[4:] == ["base", "sft", "SFT − base"]


def test_fmt_num_rounding():
    assert fmt_num(12.3456) == "12.35"
    assert fmt_num(123.456) == "123.5"
    assert fmt_num(123456.7) == "123,457"
    assert fmt_num(1.23456) == "1.235"
    assert fmt_num(0.625) == "0.625"
    assert fmt_num(0.0123456) == "0.0123"
    assert fmt_num(2e-5) == "2.00e-05"
    assert fmt_num(349) == "349" and fmt_num(123456) == "123,456"
    assert fmt_num(None) == "—" and fmt_num(float("nan")) == "—"
    assert fmt_num(2.5, signed=True) == "+2.500" and fmt_num(0.0, signed=True) == "±0"


# --------------------------------------------------------------------------- config diff

def test_flatten_config():
    cfg = {"a": {"b": {"c": 1}, "l": [1, {"x": 2}]}, "e": {}, "s": "v"}
    assert flatten_config(cfg) == {"a.b.c": 1, "a.l": [1, {"x": 2}], "e": {}, "s": "v"}
    assert flatten_config({}) == {}


def test_config_diff():
    default = {"lora": {"r": 16, "alpha": 32, "targets": ["q", "v"]}, "sft": {"lr": 2e-4, "bf16": True},
               "gone": 1}
    variant = {"lora": {"r": 8, "alpha": 32.0, "targets": ["q", "k"]}, "sft": {"lr": 2e-4, "bf16": 1},
               "new": {"x": None}}
    assert config_diff(default, variant) == [
        ("gone", 1, MISSING),
        ("lora.r", 16, 8),
        ("lora.targets", ["q", "v"], ["q", "k"]),
        ("new.x", MISSING, None),
        ("sft.bf16", True, 1),  # a type change is a difference; 32 vs 32.0 is not
    ]
    assert config_diff(default, default) == []


def test_config_section_lists_only_differing_keys():
    page = render_html(small_bundle())
    sec = page[page.index('id="configs"'):page.index('id="provenance"')]
    diff = sec[sec.index('class="configdiff'):]
    diff = diff[:diff.index("</table>")]
    assert "lora.r" in diff and "lora.alpha" not in diff and "sft.lr" not in diff
    assert re.search(r"lora\.r</td><td[^>]*>16</td><td[^>]*>8</td>", diff)


# --------------------------------------------------------------------------- empty / missing

SECTION_IDS = ("reading", "summary", "branches", "generations", "training", "promptcblue", "examples", "configs",
               "provenance")


@pytest.mark.parametrize("bundle", [
    {},
    {"title": "t", "summary": [], "training": [], "promptcblue": [], "configs": {}, "provenance": {}},
    {"summary": None, "training": None, "promptcblue": None, "configs": None, "provenance": None},
], ids=["missing", "empty", "null"])
def test_empty_sections_render_and_say_none(bundle):
    page = render_html(bundle)
    for sid in SECTION_IDS:
        start = page.index(f'<section id="{sid}">')
        sec = page[start:page.index("</section>", start)]
        assert '<p class="none">none' in sec, sid
    assert "<svg" not in page
    parse(page)


def test_partial_bundle_says_none_where_empty():
    b = small_bundle(promptcblue=[], training=[])
    b["configs"] = {"default": {"a": 1}}
    b["summary"] = [row("sft", "rougeL", 1.0)]
    b["provenance"] = {"git_commit": "abc"}
    page = render_html(b)
    assert "none (no PromptCBLUE evaluation)" in page
    assert "none (no stage was trained)" in page
    assert "none (only the default variant was evaluated)" in page
    assert "none (only the default variant was run)" in page
    assert page.count('<p class="none">none</p>') == 4  # packages, hardware, data, wall time
    assert "SFT − base" not in page  # no base column, so no delta column


def test_no_default_variant_to_compare_against():
    b = small_bundle(summary=[row("sft", "m", 1.0, variant="a"), row("sft", "m", 2.0, variant="b")],
                     configs={"a": {"x": 1}, "b": {"x": 2}})
    page = render_html(b)
    assert "none (no default variant to compare against)" in page
    assert "none (no default config to compare against)" in page


# --------------------------------------------------------------------------- escaping

EVIL_DS = "<script>alert(1)</script>"
EVIL_VAR = "v&\"'<b>"


def evil_bundle():
    b = small_bundle(title="<i>title</i>", generated_at="<u>now</u>")
    b["summary"] = [row("base", "<m>", 1.0, variant=EVIL_VAR, dataset=EVIL_DS),
                    row("sft", "<m>", 2.0, variant=EVIL_VAR, dataset=EVIL_DS),
                    row("sft", "<m>", 1.0, dataset=EVIL_DS)]
    b["metric_direction"] = {"<m>": "lower"}
    b["training"][0]["variant"] = EVIL_VAR
    b["training"][0]["stage"] = "<s>"
    b["promptcblue"][0]["variant"] = EVIL_VAR
    b["promptcblue"][0]["tasks"]["<img src=x onerror=alert(1)>"] = {"primary": "<p>", "score": 1}
    b["configs"][EVIL_VAR] = {"<k>": "https://evil.example/x.js", "lora": {"r": "<script src=//e>"}}
    b["provenance"]["git_commit"] = "<c>"
    b["provenance"]["packages"]["<pkg>"] = "http://evil.example"
    b["provenance"]["hardware"]["gpus"] = [{"name": "<gpu>"}]
    b["provenance"]["data"][0]["files"][0]["path"] = "<path>\"'&"
    b["examples"] = [{"variant": EVIL_VAR, "stage": "sft", "dataset": EVIL_DS, "template": "<t>", "kind": "sft",
                      "sequences": {"<seq>": {"tokens": 3, "label_tokens": 1,
                                              "pieces": [["<|im_start|>user\n<b>hi", False], ["</b><|im_end|>", True]]}}}]
    return b


def test_user_strings_are_escaped():
    page = render_html(evil_bundle())
    assert EVIL_DS not in page
    assert html.escape(EVIL_DS) in page
    assert html.escape(EVIL_VAR, quote=True) in page  # v&amp;&quot;&#x27;&lt;b&gt;
    assert "'<b>" not in page and "<i>title" not in page and "<u>now" not in page
    assert "<script src" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert page.lower().count("<script") == 1  # only the inline table-sorting script
    p = parse(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "main", "header", "h1", "h2", "h3",
               "div", "b", "span", "nav", "a", "section", "p", "table", "thead", "tbody", "tr",
               "th", "td", "svg", "text", "rect", "line", "polyline", "circle", "details",
               "summary", "footer", "script", "pre", "mark", "code", "ul", "li"}
    assert set(p.tags) <= allowed, set(p.tags) - allowed
    assert p.tags.count("script") == 1
    assert not any(name.startswith("on") for name, _ in p.attrs)
    assert not any(name == "src" for name, _ in p.attrs)
    assert all(v.startswith("#") for name, v in p.attrs if name == "href")
    # ... and the browser would show the original strings
    text = "".join(p.text)
    for s in (EVIL_DS, EVIL_VAR, "<img src=x onerror=alert(1)>", "https://evil.example/x.js",
              "<path>\"'&", "<gpu>", "<|im_start|>user\n<b>hi</b><|im_end|>"):
        assert s in text, s


def test_examples_section_marks_the_text_that_carries_loss():
    b = small_bundle(examples=[{"variant": "default", "stage": "sft", "dataset": "ds", "template": "chatml", "kind": "sft",
                                "sequences": {"conversation": {"tokens": 9, "label_tokens": 2, "pieces": [
                                    ["<|im_start|>user\n2 + 3<|im_end|>\n<|im_start|>assistant\n", False],
                                    ["5<|im_end|>", True], ["\n", False]]}}}])
    page = render_html(b)
    sec = page[page.index('<section id="examples">'):]
    sec = sec[:sec.index("</section>")]
    assert "ds · stage sft · template chatml" in sec and "conversation: 9 tokens, 2 carry loss" in sec
    assert '<pre class="example">&lt;|im_start|&gt;user\n2 + 3' in sec
    assert "<mark>5&lt;|im_end|&gt;</mark>\n</pre>" in sec


def test_no_network_references_in_normal_page():
    page = render_html(small_bundle())
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*(?!["']?#)""", page)
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


# --------------------------------------------------------------------------- charts

def _polylines(svg):
    return [pts.split() for pts in re.findall(r' points="([^"]*)"', svg)]


def test_chart_with_one_point():
    svg = line_chart("x", [{"name": "a", "color": "#000", "points": [(10, 2.0)]}], y_label="loss")
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert len(_polylines(svg)) == 1 and len(_polylines(svg)[0]) == 1
    assert svg.count("<circle") == 1  # a single point is visible as a marker
    assert "nan" not in svg.lower() and "inf" not in svg.lower()


def test_series_skips_nulls_and_non_finite():
    log = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": None}, {"step": 3, "eval_loss": 1.0},
           {"step": 4, "loss": float("nan")}, {"step": 5, "loss": "x"}, {"loss": 1.0}, "junk",
           {"step": 0, "loss": 3.0}]
    assert series(log, "loss") == [(0.0, 3.0), (1.0, 2.0), (5.0, 1.0)]  # missing step: its index
    assert series(log, "eval_loss") == [(3.0, 1.0)]
    assert series(None, "loss") == []


def test_chart_with_hundreds_and_many_thousands_of_points():
    pts = [(i, 1 + 1 / (i + 1)) for i in range(500)]
    svg = line_chart("x", [{"name": "a", "color": "#000", "points": pts}], y_label="loss")
    assert len(_polylines(svg)[0]) == 500 and "<circle" not in svg
    big = [(i, (i % 97) / 10) for i in range(50_000)]
    svg = line_chart("x", [{"name": "a", "color": "#000", "points": big}], y_label="loss")
    n = len(_polylines(svg)[0])
    assert 100 < n <= report.MAX_PLOT_POINTS + 2
    for x, y in (p.split(",") for p in _polylines(svg)[0]):
        assert 0 <= float(x) <= 640 and 0 <= float(y) <= 300


def test_training_section_charts():
    b = small_bundle()
    b["training"].append({"variant": "r8", "stage": "sft", "log": [
        {"step": 5, "loss": None, "eval_loss": 2.5}, {"step": 10, "loss": 2.0, "learning_rate": None}]})
    b["training"].append({"variant": "default", "stage": "dpo", "log": [{"step": 1}]})
    page = render_html(b)
    assert page.count('<svg class="chart loss"') == 1 and page.count('<svg class="chart lr"') == 1
    assert "dpo: no loss values logged" in page and "dpo: no learning-rate values logged" in page
    sft = page[page.index('id="stage-sft"'):page.index('id="stage-dpo"')]
    assert sft.count('data-series="default · train loss"') == 1
    assert 'data-series="r8 · eval loss"' in sft and 'stroke-dasharray' in sft
    # stages in pipeline order
    assert page.index('id="stage-sft"') < page.index('id="stage-dpo"')


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert nice_ticks(1.93, 2.41) == pytest.approx([2.0, 2.1, 2.2, 2.3, 2.4])
    assert nice_ticks(9, 11, 6, integer=True) == [9.0, 10.0, 11.0]
    assert nice_ticks(3, 3) == [3]


# --------------------------------------------------------------------------- promptcblue / provenance

def test_promptcblue_table():
    b = small_bundle()
    b["promptcblue"].append({"variant": "default", "model": "dpo", "dataset": "pc", "overall": 60.0,
                             "tasks": {"KUAKE-QIC": {"primary": "macro_f1", "score": 70.0}}})
    page = render_html(b)
    t = page[page.index('id="promptcblue-table"'):]
    t = t[:t.index("</table>")]
    heads = re.findall(r"<th[^>]*>([^<]*)</th>", t)
    assert heads == ["task", "primary metric", "default / sft", "default / dpo"]
    body_rows = re.findall(r"<tr[^>]*>(.*?)</tr>", t[t.index("<tbody>"):])
    assert [re.search(r">([^<]*)</td>", r).group(1) for r in body_rows] == ["CMeEE-V2", "KUAKE-QIC", "overall"]
    assert "—" in body_rows[0]  # CMeEE-V2 missing for dpo
    assert 'class="num best"' in body_rows[2] and "60.00" in body_rows[2]


def test_provenance_section():
    page = render_html(small_bundle())
    prov = page[page.index('id="provenance"'):]
    assert "abc123" in prov and "yes (dirty)" in prov and "f" * 64 in prov
    assert "349" in prov and "2.13.0" in prov and "1:21" in prov
    assert '<span class="dirty">dirty</span>' in page


# --------------------------------------------------------------------------- atomic write

def test_write_report_atomic(tmp_path, monkeypatch):
    out = tmp_path / "report" / "index.html"
    calls = []
    real_replace = os.replace

    def spy(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        assert os.path.exists(src) and os.path.getsize(src) > 1000  # complete before the rename
        assert not os.path.exists(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert write_report(small_bundle(), out) == out
    assert len(calls) == 1 and os.path.dirname(calls[0][0]) == str(out.parent)
    assert calls[0][1] == str(out)
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.parent.iterdir()) == ["index.html"]


def test_write_report_failure_keeps_previous_page(tmp_path, monkeypatch):
    out = tmp_path / "index.html"
    out.write_text("old page")

    def boom(bundle):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_html", boom)
    with pytest.raises(RuntimeError):
        write_report(small_bundle(), out)
    assert out.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]
    monkeypatch.undo()

    def fail_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail_replace)
    with pytest.raises(OSError):
        write_report(small_bundle(), out)
    assert out.read_text() == "old page" and sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


def test_cli(tmp_path):
    src = tmp_path / "bundle.json"
    src.write_text(json.dumps(small_bundle()), encoding="utf-8")
    assert report.main([str(src), str(tmp_path / "out" / "index.html")]) == 0
    assert "<svg" in (tmp_path / "out" / "index.html").read_text(encoding="utf-8")


def test_provenance_is_what_each_stage_recorded_when_it_trained():
    from tuneflow.report import merge_per_stage

    merged = merge_per_stage([("pt", {"torch": "2.13.0", "hostname": "n1", "gpus": []}),
                              ("sft", {"torch": "2.13.0", "hostname": "n2", "gpus": []}),
                              ("r8/sft", {"torch": "2.14.1", "hostname": "n2", "gpus": []})])
    assert merged == {"torch": "2.13.0 (pt, sft); 2.14.1 (r8/sft)", "hostname": "n1 (pt); n2 (sft, r8/sft)", "gpus": []}


def test_data_table_shows_kept_truncated_and_dropped_per_dataset_and_stage(tmp_path):
    """From the tokenized directories' meta.json: a row per (dataset, stage, split), the split whose
    cut + dropped records passed the warning threshold marked."""
    tok = tmp_path / "tokenized" / "alpaca" / "sft-0123456789"
    tok.mkdir(parents=True)
    (tok / "meta.json").write_text(json.dumps({
        "kind": "sft", "warnings": ["alpaca train: 30 of 1000 records (3.0%) were cut ..."],
        "splits": {"train": {"records": 1000, "kept": 990, "truncated": 20, "dropped": 10,
                             "truncated_examples": ["r7"], "dropped_examples": ["r9"]},
                   "validation": {"records": 50, "kept": 50, "truncated": 0, "dropped": 0}}}))
    pt = tmp_path / "tokenized" / "text" / "pt-0123456789"
    pt.mkdir(parents=True)
    (pt / "meta.json").write_text(json.dumps({"kind": "pt", "warnings": [], "splits": {
        "train": {"records": 400, "kept": 400, "truncated": 0, "dropped": 0, "blocks": 12, "tokens_dropped_at_end": 77},
        "validation": {"records": 0}}}))
    rows = report.tokenization_rows([("SFT", "alpaca", str(tok)), ("PT", "text", str(pt))])
    assert [(r["dataset"], r["stage"], r["split"], r["kept"], r["truncated"], r["dropped"], r["warning"]) for r in rows] == [
        ("alpaca", "SFT", "train", 990, 20, 10, True), ("alpaca", "SFT", "validation", 50, 0, 0, False),
        ("text", "PT", "train", 400, 0, 0, False)]
    page = render_html(small_bundle(tokenization=rows))
    table = page[page.index('id="tokenization-table"'):]
    table = table[:table.index("</table>")]
    assert table.count("<tr") == 4 and "r7, r9" in table and "12 blocks, 77 tokens left over" in table
    assert 'class="num bad"' in table  # the warned split
    assert "none (nothing was tokenized" in render_html(small_bundle())


# --------------------------------------------------------------------------- the RLHF branches

def branch_bundle():
    fmt = {"pairs": "preference", "pc": "promptcblue", "txt": "text"}
    rows = [row(m, "promptcblue_overall", v, dataset="pc") for m, v in (("sft", 40.0), ("dpo", 35.0), ("rl", 44.0))]
    rows += [row(m, "mean_reward", v, dataset="pc") for m, v in (("sft", 0.4), ("rl", 0.44))]
    rows += [row("rm", "pairwise_accuracy", 76.0, dataset="pairs"), row("dpo", "preference_accuracy", 64.0, dataset="pairs"),
             row("base", "perplexity", 1600.0, dataset="txt"), row("sft", "perplexity", 14.0, dataset="txt"),
             row("dpo", "perplexity", 15.0, dataset="txt")]
    log = [{"step": s, "loss": 0.1, "reward": 0.1 * s, "kl": 0.01 * s, "completions/mean_length": 3.0} for s in (5, 10, 15)]
    return small_bundle(summary=rows, promptcblue=[],
                        stage_bases={"sft": "base", "dpo": "sft", "rm": "sft", "rl": "sft"},
                        configs={"default": {"datasets": {d: {"format": f} for d, f in fmt.items()}}},
                        training=[{"variant": "default", "stage": "rl", "log": log, "info": {}}],
                        generations=[{"dataset": "pc", "items": [
                            {"id": "1", "prompt": "<b>q</b>", "reference": "A", "answers": {"sft": "B", "rl": "A"},
                             "rewards": {"sft": 0.0, "rl": 1.0}}]}])


def test_observations_lead_with_each_stages_goal_and_name_what_got_worse():
    from tuneflow.report import observations

    b = branch_bundle()
    formats = {d: v["format"] for d, v in b["configs"]["default"]["datasets"].items()}
    found = {o["stage"]: o for o in observations(b["summary"], b["stage_bases"], b["metric_direction"], formats)}
    assert [g["text"] for g in found["rl"]["goal"]] == ["promptcblue_overall on pc: 40.00 → 44.00", "mean_reward on pc: 0.400 → 0.440"]
    assert all(g["cls"] == "good" for g in found["rl"]["goal"])
    assert found["rm"]["goal"] == [{"text": "pairwise_accuracy on pairs: 76.00 (chance: 50.00)", "cls": "good"}]
    dpo = found["dpo"]
    assert {(w["dataset"], w["metric"]) for w in dpo["worse"]} == {("pc", "promptcblue_overall"), ("txt", "perplexity")}
    assert "alignment tax" in dpo["trade_off"]
    # SFT's goal is on the data it trains on, not on the plain text it may forget
    assert [g["text"] for g in found["sft"]["goal"]] == []
    assert found["sft"]["better"] == 1 and found["sft"]["worse"] == []


def test_report_shows_branches_side_by_side_and_generated_answers():
    page = render_html(branch_bundle())
    sec = page[page.index('<section id="branches">'):page.index('<section id="generations">')]
    assert "From SFT: DPO, RM, RL" in sec and 'id="branches-sft"' in sec
    assert "44.00 (+4.000)" in sec and "35.00 (-5.000)" in sec
    assert 'data-series="RL"' in sec and "mean reward over training" in sec and "KL to the reference over training" in sec
    gen = page[page.index('<section id="generations">'):page.index('<section id="training">')]
    assert "&lt;b&gt;q&lt;/b&gt;" in gen and "<b>q</b>" not in gen  # user text is escaped
    assert "A [1.000]" in gen and 'class="text good" title="equals the reference"' in gen
    reading = page[page.index('<section id="reading">'):page.index('<section id="summary">')]
    assert "alignment tax" in reading and "pairwise_accuracy on pairs: 76.00 (chance: 50.00)" in reading


def test_training_section_charts_each_stages_own_curves():
    page = render_html(branch_bundle())
    rl = page[page.index('id="stage-rl"'):]
    assert "rl: mean reward" in rl and "rl: KL to the reference" in rl and "rl: completion length (tokens)" in rl


def test_generations_are_gathered_from_the_prediction_files(tmp_path):
    from tuneflow.report import build_generations

    jobs = []
    for model, answers in (("sft", ["x", "y", "z", "w"]), ("rl", ["x2", "y2", "z2", "w2"])):
        d = tmp_path / model
        d.mkdir()
        (d / "ds.json").write_text("{}")
        (d / "ds.predictions.jsonl").write_text("".join(json.dumps(
            {"id": str(i), "prompt": [{"role": "user", "content": f"q{i}"}], "prediction": a, "reference": "r",
             **({"reward": 0.5} if model == "rl" else {})}) + "\n" for i, a in enumerate(answers)))
        jobs.append(("default", model, "ds", str(d / "ds.json")))
    (tmp_path / "pairs.json").write_text("{}")  # a dataset without generations
    jobs.append(("default", "sft", "pairs", str(tmp_path / "pairs.json")))
    gens = build_generations(jobs, per_dataset=3)
    assert [g["dataset"] for g in gens] == ["ds"] and len(gens[0]["items"]) == 3
    assert gens[0]["items"][1] == {"id": "1", "prompt": "q1", "reference": "r", "answers": {"sft": "y", "rl": "y2"},
                                   "rewards": {"rl": 0.5}}

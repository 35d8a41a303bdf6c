"""The report (the `report` rule): gather everything it shows into a bundle (`build_bundle`, written
as JSON next to the page) and render that into one self-contained HTML page.

The page needs no network at all: CSS is inline, charts are inline SVG built here, and the only
script is a few lines that make tables sortable (the page reads the same without it). Every string
taken from the bundle is user-controlled and goes through `esc()` before it reaches the page.

Public API: `build_bundle(...)`, `render_html(bundle) -> str`, `write_report(bundle, path)`; the small pure helpers
(`flatten_config`, `config_diff`, `pivot_summary`, `stage_deltas`, `variant_deltas`,
`delta_class`, `fmt_num`, `nice_ticks`) are unit-tested on their own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import math
import sys
from pathlib import Path

from tuneflow import DEFAULT_VARIANT
from tuneflow.io import atomic_file, read_json, verify_dir
from tuneflow.stages import STAGE_NAMES, STAGES
from tuneflow.summarize import LOWER_IS_BETTER, read_summary

MODEL_ORDER = ("base", *STAGE_NAMES)
STAGE_ORDER = STAGE_NAMES
# (label, newer model, older model): the deltas shown next to the per-model values.
DELTA_PAIRS = tuple((f"{s.label} − {STAGES[s.compared_with].label if s.compared_with in STAGES else s.compared_with}",
                     s.name, s.compared_with) for s in STAGES.values() if s.compared_with)
METRIC_ORDER = ("rougeL", "bleu4", "exact_match", "eval_loss", "perplexity", "promptcblue_overall", "mean_reward",
                "preference_accuracy", "reward_margin", "logp_accuracy", "pairwise_accuracy", "mean_margin")
# What a random guess scores (percentages of pairs ranked right): the yardstick of a model with no
# model before it to compare with (the reward model).
CHANCE = {"pairwise_accuracy": 50.0, "preference_accuracy": 50.0, "logp_accuracy": 50.0}
GENERATIONS_PER_DATASET = 3   # held-out prompts shown per dataset with every model's answer
ANSWER_CHARS = 400            # longer texts are cut (and say so) in that table
# Used only when the bundle has no `metric_direction` at all; otherwise the bundle's map rules and
# every metric it does not name is higher-is-better.
DEFAULT_METRIC_DIRECTION = LOWER_IS_BETTER
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
MAX_PLOT_POINTS = 1500  # longer series are decimated (min/max per bucket) before drawing
MISSING = object()  # a config key present on one side of a diff only


# --------------------------------------------------------------------------- the bundle


def merge_per_stage(recorded) -> dict:
    """[(stage label, {key: value})] -> {key: value}, or 'value (stages); other (stages)' where the
    stages recorded different values (say, training on another node or software version)."""
    merged = {}
    for key in dict.fromkeys(k for _, d in recorded for k in d):
        by_value = {}
        for label, d in recorded:
            if key in d:
                by_value.setdefault(repr(d[key]), (d[key], []))[1].append(label)
        if len(by_value) == 1:
            merged[key] = next(iter(by_value.values()))[0]
        else:
            merged[key] = "; ".join(f"{v} ({', '.join(labels)})" for v, labels in by_value.values())
    return merged


def tokenization_rows(tokenized) -> list[dict]:
    """What tokenizing kept, cut and dropped: one row per (stage, dataset, split) from the
    tokenized directories' meta.json. tokenized: (stage label, dataset, tokenized dir)."""
    rows = []
    for label, dataset, path in tokenized:
        meta = read_json(Path(path) / "meta.json")
        warnings = " ".join(_list(meta.get("warnings")))
        for split, stats in _dict(meta.get("splits")).items():
            if not stats.get("records"):
                continue
            rows.append({"stage": label, "dataset": dataset, "split": split, "kind": meta.get("kind"),
                         **{k: stats.get(k) for k in ("records", "kept", "truncated", "dropped", "blocks",
                                                      "tokens_dropped_at_end")},
                         "examples": [*stats.get("truncated_examples", []), *stats.get("dropped_examples", [])][:5],
                         "warning": f"{dataset} {split}" in warnings})
    return rows


def build_bundle(summary_path, eval_jobs, trained, configs, repo_dir, title="tuneflow report", tokenized=()) -> dict:
    """Everything the page shows, as one JSON document. trained: (variant, stage, adapter_dir);
    configs: variant -> effective config; tokenized: (stage label, dataset, tokenized dir)."""
    from tuneflow.provenance import git_state, versions

    training, wall = [], []
    data_seen = {}
    packages, hardware = [], []  # what each stage recorded when it trained, not what the report runs with
    for variant, stage, adapter_dir in trained:
        verify_dir(adapter_dir, required=False)  # as its train job wrote it
        info = read_json(Path(adapter_dir) / "train_info.json")
        log = read_json(Path(adapter_dir) / "loss_log.json")
        training.append({"variant": variant, "stage": stage, "finetuning": info.get("finetuning"), "log": log,
                         "info": {k: info.get(k) for k in ("wall_time_s", "train_runtime_s", "world_size", "train_tokens",
                                                           "steps", "resumed_from_step", "deepspeed")}})
        wall.append({"variant": variant, "stage": stage, "seconds": info.get("wall_time_s")})
        label = stage if variant == "default" else f"{variant}/{stage}"
        packages.append((label, info.get("versions") or {}))
        hardware.append((label, info.get("hardware") or {}))
        for d in info.get("data", []):
            data_seen[d["dataset"]] = {"dataset": d["dataset"], "files": d["sources"],
                                       "kept": d["counts"]["kept"], "dropped": d["counts"]["dropped"]}
    examples = _examples(trained)
    generations = build_generations(eval_jobs)
    promptcblue = []
    for variant, model, dataset, path in eval_jobs:
        res = read_json(path)
        if "promptcblue" in res:
            p = res["promptcblue"]
            promptcblue.append({"variant": variant, "model": model, "dataset": dataset, "overall": p["overall"],
                                "tasks": {t: {"primary": e["primary"], "score": e["score"]} for t, e in p["tasks"].items()}})
    return {
        "title": title,
        "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "summary": read_summary(summary_path),
        "metric_direction": LOWER_IS_BETTER,
        "training": training,
        "tokenization": tokenization_rows(tokenized),
        "promptcblue": promptcblue,
        "examples": examples,
        "generations": generations,
        "stage_bases": stage_bases((configs or {}).get(DEFAULT_VARIANT) or {}),
        "configs": configs,
        "provenance": {**git_state(repo_dir),
                       "packages": merge_per_stage(packages) if packages else versions(),
                       "hardware": merge_per_stage(hardware), "data": list(data_seen.values()),
                       "wall_time": wall},
    }


def _examples(trained) -> list:
    """The first training row of each tokenized dataset a stage trained on (example.json, written by
    the tokenize rule: tuneflow.show_example), once per tokenized directory."""
    out, seen = [], set()
    for variant, stage, adapter_dir in trained:
        info = read_json(Path(adapter_dir) / "train_info.json")
        for d in info.get("tokenized") or []:
            path = Path(d) / "example.json"
            if d in seen or not path.is_file():
                continue
            seen.add(d)
            meta = read_json(Path(d) / "meta.json")
            out.append({"variant": variant, "stage": stage, "dataset": Path(meta.get("source", d)).name,
                        "dir": d, "template": meta.get("settings", {}).get("chat_template"), **read_json(path)})
    return out


def stage_bases(cfg: dict) -> dict:
    """stage -> the model it starts from ("base" or a stage), for the stages `cfg` enables."""
    enabled = [s for s in STAGE_NAMES if ((cfg.get("stages") or {}).get(s) or {}).get("enabled")]
    return {s: next((b for b in STAGES[s].starts_from if b in enabled), "base") for s in enabled}


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):  # messages: the last user turn is the question
        return next((m.get("content", "") for m in reversed(prompt) if m.get("role") == "user"), "")
    return str(prompt or "")


def build_generations(eval_jobs, per_dataset: int = GENERATIONS_PER_DATASET) -> list:
    """For the first held-out records of each dataset with generated answers: the prompt, the
    reference and every evaluated model's answer (and its reward, where it was scored)."""
    by_dataset: dict = {}
    for variant, model, dataset, path in eval_jobs:
        preds = Path(str(path)[: -len(".json")] + ".predictions.jsonl")
        if not preds.is_file():
            continue
        with open(preds, encoding="utf-8") as f:
            rows = [json.loads(line) for line, _ in zip(f, range(per_dataset))]
        if not rows:
            continue
        column = model if variant == DEFAULT_VARIANT else f"{variant}/{model}"
        entry = by_dataset.setdefault(dataset, {"dataset": dataset, "items": {}})
        for r in rows:
            item = entry["items"].setdefault(str(r.get("id")), {"id": r.get("id"), "prompt": _prompt_text(r.get("prompt")),
                                                               "reference": r.get("reference"), "answers": {},
                                                               "rewards": {}})
            item["answers"][column] = r.get("prediction")
            if r.get("reward") is not None:
                item["rewards"][column] = r["reward"]
    return [{"dataset": d["dataset"], "items": list(d["items"].values())} for d in by_dataset.values()]


# --------------------------------------------------------------------------- small pure helpers

def esc(value) -> str:
    """HTML-escape anything (quotes included) for text or attribute context.

    `://` becomes `&#58;//` so that a URL inside user data (say a config value) is shown as text
    exactly as before but the page source never contains `http://` or `https://`.
    """
    return html.escape(str(value), quote=True).replace("://", "&#58;//")


def as_number(value):
    """A finite float, or None for None / NaN / inf / anything that is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def fmt_num(value, signed=False) -> str:
    """Round for reading: more decimals for small numbers, thousands separators for big ones."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:+,d}" if signed else f"{value:,d}"
    v = as_number(value)
    if v is None:
        return "—"
    sign = "+" if signed else ""
    a = abs(v)
    if a == 0:
        return "0" if not signed else "±0"
    if a >= 1000:
        spec = ",.0f"
    elif a >= 100:
        spec = ".1f"
    elif a >= 10:
        spec = ".2f"
    elif a >= 0.1:
        spec = ".3f"
    elif a >= 0.001:
        spec = ".4f"
    else:
        spec = ".2e"
    return format(v, sign + spec)


def fmt_duration(seconds) -> str:
    s = as_number(seconds)
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_value(value) -> str:
    """A config / provenance value as text: strings as-is, everything else as compact JSON."""
    if value is MISSING:
        return "(absent)"
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def flatten_config(cfg, prefix: str = "") -> dict:
    """Nested dicts to `{"a.b.c": leaf}`. Lists and scalars are leaves; an empty dict is a leaf `{}`
    (so "section present but empty" differs from "section absent")."""
    out: dict = {}
    if not isinstance(cfg, dict):
        if prefix:
            out[prefix] = cfg
        return out
    if not cfg and prefix:
        out[prefix] = {}
        return out
    for key, value in cfg.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten_config(value, dotted))
        else:
            out[dotted] = value
    return out


def _same(a, b) -> bool:
    # 1 == 1.0 == True in Python; a config diff should still show a type change (true vs 1).
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def config_diff(default_cfg, variant_cfg) -> list[tuple[str, object, object]]:
    """Sorted `(dotted key, default value, variant value)` for every key whose value differs.
    A key present on one side only has `MISSING` on the other."""
    a, b = flatten_config(default_cfg or {}), flatten_config(variant_cfg or {})
    rows = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, MISSING), b.get(key, MISSING)
        if va is MISSING or vb is MISSING or not _same(va, vb):
            rows.append((key, va, vb))
    return rows


def metric_direction(metric: str, directions: dict) -> str:
    d = str((directions or {}).get(metric, "higher")).lower()
    return "lower" if d in ("lower", "min", "down", "minimize") else "higher"


def delta_class(metric: str, delta, directions: dict) -> str:
    """`good` / `bad` / `same` (no change) / `na` (no delta) for a change of `metric` by `delta`."""
    d = as_number(delta)
    if d is None:
        return "na"
    if abs(d) < 1e-12:
        return "same"
    better = d > 0 if metric_direction(metric, directions) == "higher" else d < 0
    return "good" if better else "bad"


def _order_key(value: str, order) -> tuple:
    return (order.index(value), "") if value in order else (len(order), str(value))


def _variant_key(v) -> tuple:
    return (0, "") if v == DEFAULT_VARIANT else (1, str(v))


def pivot_summary(summary) -> dict:
    """`{(variant, dataset, metric): {model: value}}` from the tidy summary rows (last row wins;
    a row without a finite value counts as missing). Missing variant means `default`."""
    table: dict = {}
    for row in summary or []:
        if not isinstance(row, dict):
            continue
        model = row.get("stage") or row.get("model")
        metric, dataset = row.get("metric"), row.get("dataset")
        if model is None or metric is None:
            continue
        key = (str(row.get("variant") or DEFAULT_VARIANT), str(dataset if dataset is not None else ""),
               str(metric))
        table.setdefault(key, {})[str(model)] = as_number(row.get("value"))
    return table


def sorted_pivot_keys(pivot) -> list:
    return sorted(pivot, key=lambda k: (_variant_key(k[0]), k[1], _order_key(k[2], METRIC_ORDER)))


def model_columns(models) -> list[str]:
    models = set(models)
    return [m for m in MODEL_ORDER if m in models] + sorted(models - set(MODEL_ORDER))


def stage_deltas(values: dict) -> dict:
    """`{label: newer - older}` for each pair in DELTA_PAIRS (None when either value is missing)."""
    out = {}
    for label, newer, older in DELTA_PAIRS:
        a, b = as_number(values.get(newer)), as_number(values.get(older))
        out[label] = None if a is None or b is None else a - b
    return out


def variant_deltas(summary) -> list[dict]:
    """For every non-default variant, each (model, dataset, metric) it shares with the default
    variant: `{variant, model, dataset, metric, default, value, delta}` (delta = value - default)."""
    pivot = pivot_summary(summary)
    rows = []
    for (variant, dataset, metric) in sorted_pivot_keys(pivot):
        if variant == DEFAULT_VARIANT:
            continue
        base = pivot.get((DEFAULT_VARIANT, dataset, metric))
        if base is None:
            continue
        values = pivot[(variant, dataset, metric)]
        for model in model_columns(values):
            if model not in base:
                continue
            a, b = as_number(values[model]), as_number(base[model])
            rows.append({"variant": variant, "model": model, "dataset": dataset, "metric": metric,
                         "default": b, "value": a,
                         "delta": None if a is None or b is None else a - b})
    return rows


def _metric_label(dataset, metric) -> str:
    return f"{metric} on {dataset}" if dataset else metric


def observations(summary, bases: dict, directions: dict, formats: dict | None = None) -> list[dict]:
    """What each stage of the default variant did, from the numbers: its goal metrics (on the
    datasets of the formats it trains on; `formats`: dataset -> format) against the model it is
    compared with (or chance), how many other numbers got better or worse, the ones that got
    worse, and the stage's own explanation of that trade-off (tuneflow.stages).

    Returns [{"stage", "label", "against", "goal": [{"text", "cls"}], "better", "worse": [...],
    "trade_off"}] in stage order."""
    pivot = {k[1:]: v for k, v in pivot_summary(summary).items() if k[0] == DEFAULT_VARIANT}
    present = {m for values in pivot.values() for m in values}
    out = []
    for stage in STAGE_NAMES:
        if stage not in present:
            continue
        st = STAGES[stage]
        against = st.compared_with if st.compared_with in present else None
        goal, better, worse = [], 0, []
        for (dataset, metric), values in sorted(pivot.items(), key=lambda kv: (_order_key(kv[0][1], METRIC_ORDER), kv[0][0])):
            new = as_number(values.get(stage))
            if new is None:
                continue
            old = as_number(values.get(against)) if against else None
            is_goal = metric in st.goal and (formats is None or formats.get(dataset) in st.formats)
            if old is None and is_goal and metric in CHANCE:
                cls = "good" if new > CHANCE[metric] else "bad"
                goal.append({"text": f"{_metric_label(dataset, metric)}: {fmt_num(new)} (chance: {fmt_num(CHANCE[metric])})",
                             "cls": cls})
                continue
            if old is None:
                continue
            cls = delta_class(metric, new - old, directions)
            if is_goal:
                goal.append({"text": f"{_metric_label(dataset, metric)}: {fmt_num(old)} → {fmt_num(new)}", "cls": cls})
            elif cls == "good":
                better += 1
            elif cls == "bad":
                worse.append({"dataset": dataset, "metric": metric, "old": old, "new": new})
        out.append({"stage": stage, "label": st.label, "against": against, "goal": goal, "better": better,
                    "worse": worse, "trade_off": st.trade_off, "starts_from": bases.get(stage)})
    return out


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1/2/5 x 10^k) covering [lo, hi]; `integer`: a step of at least 1."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)) if step >= 1 else 1.0)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = start + len(ticks) * step
    return ticks


def fmt_tick(value: float, step: float) -> str:
    if value == 0:
        return "0"
    if step and (abs(step) < 1e-3 or abs(value) >= 1e6):
        mant, exp = f"{value:.2e}".split("e")
        mant = mant.rstrip("0").rstrip(".")
        return f"{mant}e{int(exp)}"
    decimals = max(0, -math.floor(math.log10(abs(step)) + 1e-9)) if step else 0
    if step and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1  # e.g. a 2.5 step
    return f"{value:,.{decimals}f}"


def _decimate(points: list, limit: int = MAX_PLOT_POINTS) -> list:
    """Keep the first/last point and each bucket's min and max (in x order) so spikes survive."""
    if len(points) <= limit:
        return points
    buckets = limit // 2
    size = len(points) / buckets
    out = []
    for i in range(buckets):
        chunk = points[int(i * size):int((i + 1) * size)]
        if not chunk:
            continue
        lo, hi = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}, key=lambda p: p[0]))
    if out[0] != points[0]:
        out.insert(0, points[0])
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


def series(log, key: str) -> list[tuple[float, float]]:
    """`(step, value)` for the log entries where `key` is a finite number, sorted by step.
    Entries without a step use their position in the log."""
    pts = []
    for i, entry in enumerate(log or []):
        if not isinstance(entry, dict):
            continue
        y = as_number(entry.get(key))
        if y is None:
            continue
        x = as_number(entry.get("step"))
        pts.append((x if x is not None else float(i), y))
    pts.sort(key=lambda p: p[0])
    return pts


# --------------------------------------------------------------------------- SVG charts

def line_chart(title: str, lines: list[dict], *, y_label: str, x_label: str = "step",
               width: int = 640, height: int = 300, y_from_zero: bool = False,
               css_class: str = "chart", x_integer: bool = True, legend_cols: int = 3) -> str:
    """An inline SVG line chart.

    `lines`: `{"name", "color", "points": [(x, y)], "dash": bool, "markers": bool}`. Lines with one
    point show a marker; nulls were already dropped by `series()`; long lines are decimated.
    """
    lines = [ln for ln in lines if ln["points"]]
    legend_rows = max(1, math.ceil(len(lines) / legend_cols))
    ml, mr, mt, mb = 64, 16, 28, 44 + 18 * legend_rows
    pw, ph = width - ml - mr, height - mt - mb
    xs = [p[0] for ln in lines for p in ln["points"]]
    ys = [p[1] for ln in lines for p in ln["points"]]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y_from_zero:
        y0, y1 = min(0.0, y0), max(0.0, y1)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if y0 == y1:
        pad = abs(y0) * 0.1 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = (y0 if y_from_zero and y0 == 0 else y0 - pad), y1 + pad
    xt, yt = nice_ticks(x0, x1, 6, integer=x_integer), nice_ticks(y0, y1, 5)
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0

    def sx(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return mt + ph - (y - y0) / (y1 - y0) * ph

    out = [f'<svg class="{css_class}" role="img" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" aria-label="{esc(title)}">',
           f"<title>{esc(title)}</title>",
           f'<text class="ctitle" x="{ml}" y="18">{esc(title)}</text>',
           f'<rect class="plot" x="{ml}" y="{mt}" width="{pw}" height="{ph}"/>']
    for t in yt:
        y = sy(t)
        out.append(f'<line class="grid" x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{esc(fmt_tick(t, ystep))}</text>")
    for t in xt:
        x = sx(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{mt + ph + 16}" text-anchor="middle">'
                   f"{esc(fmt_tick(t, xstep))}</text>")
    out.append(f'<line class="axis" x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}"/>'
               f'<line class="axis" x1="{ml}" x2="{ml}" y1="{mt}" y2="{mt + ph}"/>'
               f'<text class="alabel" x="{ml + pw / 2:.1f}" y="{mt + ph + 34}" '
               f'text-anchor="middle">{esc(x_label)}</text>'
               f'<text class="alabel" transform="translate(14 {mt + ph / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{esc(y_label)}</text>')
    for ln in lines:
        pts = _decimate(ln["points"])
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 4"' if ln.get("dash") else ""
        out.append(f'<polyline class="series" data-series="{esc(ln["name"])}" '
                   f'data-points="{len(pts)}" fill="none" stroke="{esc(ln["color"])}" '
                   f'stroke-width="1.8"{dash} points="{coords}"/>')
        if ln.get("markers") or len(pts) <= 30:
            for x, y in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.8" '
                           f'fill="{esc(ln["color"])}"><title>{esc(ln["name"])}: step '
                           f"{esc(fmt_num(x))}, {esc(fmt_num(y))}</title></circle>")
    # legend below the x axis label, `legend_cols` entries per row
    ly = mt + ph + 52
    for i, ln in enumerate(lines):
        lx = ml + (i % legend_cols) * (pw / legend_cols)
        yy = ly + (i // legend_cols) * 18
        dash = ' stroke-dasharray="6 4"' if ln.get("dash") else ""
        out.append(f'<line x1="{lx:.1f}" x2="{lx + 22:.1f}" y1="{yy - 4}" y2="{yy - 4}" '
                   f'stroke="{esc(ln["color"])}" stroke-width="2.5"{dash}/>'
                   f'<text class="legend" x="{lx + 28:.1f}" y="{yy}">{esc(ln["name"])}</text>')
    out.append("</svg>")
    return "".join(out)


# --------------------------------------------------------------------------- HTML building blocks

def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


def _none(what: str = "none") -> str:
    return f'<p class="none">{esc(what)}</p>'


def _table(headers: list, rows: list[list], *, cls: str = "", tid: str = "",
           numeric: set | None = None, sortable: bool = True, row_classes: list | None = None) -> str:
    """`rows` are lists of already-built `<td>` strings; `headers` are plain texts (escaped here)."""
    numeric = numeric or set()
    row_classes = row_classes or [""] * len(rows)
    ths = "".join(f'<th{" class=num" if i in numeric else ""} scope="col">{esc(h)}</th>'
                  for i, h in enumerate(headers))
    attrs = (f' id="{esc(tid)}"' if tid else "") + f' class="{esc(cls)}{" sortable" if sortable else ""}"'
    body = "".join((f'<tr class="{esc(rc)}">' if rc else "<tr>") + "".join(r) + "</tr>"
                   for r, rc in zip(rows, row_classes))
    return (f'<div class="tablewrap"><table{attrs}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _td(text, cls: str = "", title: str = "", sort=None) -> str:
    a = (f' class="{esc(cls)}"' if cls else "") + (f' title="{esc(title)}"' if title else "")
    if sort is not None:
        a += f' data-v="{esc(sort)}"'
    return f"<td{a}>{esc(text)}</td>"


def _num_td(value, cls: str = "num", signed=False) -> str:
    v = as_number(value)
    if v is None:
        return _td("—", cls + " missing")
    return _td(fmt_num(value, signed=signed), cls, title=repr(value), sort=repr(v))


def _delta_td(metric, delta, directions, older=None, detail: str = "") -> str:
    c = delta_class(metric, delta, directions)
    if c == "na":
        return _td("—", "num delta missing")
    d = as_number(delta)
    arrow = "▲ " if d > 0 else "▼ " if d < 0 else ""
    title = f"{d:+.6g}"
    o = as_number(older)
    if o:
        title += f" ({d / abs(o) * 100:+.1f}%)"
    title += {"good": " — better", "bad": " — worse", "same": " — unchanged"}[c]
    if detail:
        title = f"{detail}: {title}"
    return _td(arrow + fmt_num(d, signed=True), f"num delta {c}", title=title, sort=repr(d))


def _dir_td(metric, directions) -> str:
    d = metric_direction(metric, directions)
    return _td("↑" if d == "higher" else "↓", "dir", title=f"{d} is better")


def _list(section) -> list:
    return section if isinstance(section, list) else []


def _dict(section) -> dict:
    return section if isinstance(section, dict) else {}


def _variant_colors(bundle) -> dict:
    names = set()
    for e in _list(bundle.get("training")):
        if isinstance(e, dict):
            names.add(str(e.get("variant") or DEFAULT_VARIANT))
    for r in _list(bundle.get("summary")):
        if isinstance(r, dict):
            names.add(str(r.get("variant") or DEFAULT_VARIANT))
    names.update(str(k) for k in _dict(bundle.get("configs")))
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(sorted(names, key=_variant_key))}


# --------------------------------------------------------------------------- page sections

def _summary_section(bundle, directions) -> str:
    pivot = pivot_summary(_list(bundle.get("summary")))
    if not pivot:
        return _section("summary", "Evaluation summary", _none("none (no evaluation results)"))
    models = model_columns({m for vals in pivot.values() for m in vals})
    pairs = [(label, a, b) for label, a, b in DELTA_PAIRS if a in models and b in models]
    headers = ["variant", "dataset", "metric", ""] + models + [p[0] for p in pairs]
    n0 = 4
    numeric = set(range(n0, len(headers)))
    rows, row_classes, prev = [], [], None
    for key in sorted_pivot_keys(pivot):
        variant, dataset, metric = key
        row_classes.append("group" if prev is not None and variant != prev else "")
        prev = variant
        values = pivot[key]
        deltas = stage_deltas(values)
        row = [_td(variant, "variant"), _td(dataset), _td(metric, "metric"), _dir_td(metric, directions)]
        row += [_num_td(values.get(m)) for m in models]
        row += [_delta_td(metric, deltas[label], directions, values.get(b)) for label, _, b in pairs]
        rows.append(row)
    body = ('<p class="hint">One row per (variant, dataset, metric). ↑/↓: which direction is '
            'better. Deltas are coloured <span class="good pill">better</span> / '
            '<span class="bad pill">worse</span>; hover a cell for the exact value.</p>')
    body += _table(headers, rows, cls="summary", tid="summary-table", numeric=numeric,
                   row_classes=row_classes)

    body += "<h3>Variant vs default</h3>"
    variants = {k[0] for k in pivot}
    vrows = variant_deltas(_list(bundle.get("summary")))
    if not variants - {DEFAULT_VARIANT}:
        body += _none("none (only the default variant was evaluated)")
    elif DEFAULT_VARIANT not in variants:
        body += _none("none (no default variant to compare against)")
    elif not vrows:
        body += _none("none (no results shared with the default variant)")
    else:
        vmodels = model_columns({r["model"] for r in vrows})
        grouped: dict = {}
        for r in vrows:
            grouped.setdefault((r["variant"], r["dataset"], r["metric"]), {})[r["model"]] = r
        rows = []
        for (variant, dataset, metric), by_model in grouped.items():
            row = [_td(variant, "variant"), _td(dataset), _td(metric, "metric"),
                   _dir_td(metric, directions)]
            for m in vmodels:
                r = by_model.get(m)
                if r is None:
                    row.append(_td("—", "num delta missing"))
                    continue
                row.append(_delta_td(metric, r["delta"], directions, r["default"],
                                     detail=f"default {fmt_num(r['default'])} → "
                                            f"{variant} {fmt_num(r['value'])}"))
            rows.append(row)
        body += ('<p class="hint">Each non-default variant minus the default variant, per model '
                 '(hover a cell for both values).</p>')
        body += _table(["variant", "dataset", "metric", ""] + [f"{m} Δ" for m in vmodels], rows,
                       cls="vdelta", tid="variant-table", numeric=set(range(4, 4 + len(vmodels))))
    return _section("summary", "Evaluation summary", body)


def _training_section(bundle, colors) -> str:
    entries = [e for e in _list(bundle.get("training")) if isinstance(e, dict)]
    if not entries:
        return _section("training", "Training curves", _none("none (no stage was trained)"))
    by_stage: dict = {}
    for e in entries:
        by_stage.setdefault(str(e.get("stage") or "?"), []).append(e)
    body = []
    for stage in sorted(by_stage, key=lambda s: _order_key(s, STAGE_ORDER)):
        runs = sorted(by_stage[stage], key=lambda e: _variant_key(str(e.get("variant") or DEFAULT_VARIANT)))
        loss_lines, lr_lines = [], []
        for e in runs:
            v = str(e.get("variant") or DEFAULT_VARIANT)
            log = _list(e.get("log"))
            color = colors.get(v, PALETTE[0])
            loss_lines.append({"name": f"{v} · train loss", "color": color, "points": series(log, "loss")})
            loss_lines.append({"name": f"{v} · eval loss", "color": color, "dash": True,
                               "markers": True, "points": series(log, "eval_loss")})
            lr_lines.append({"name": v, "color": color, "points": series(log, "learning_rate")})
        charts = []
        if any(ln["points"] for ln in loss_lines):
            charts.append(line_chart(f"{stage}: loss", loss_lines, y_label="loss",
                                     css_class="chart loss", legend_cols=2))
        else:
            charts.append(_none(f"{stage}: no loss values logged"))
        if any(ln["points"] for ln in lr_lines):
            charts.append(line_chart(f"{stage}: learning rate", lr_lines, y_label="learning rate",
                                     width=420, height=240, y_from_zero=True, css_class="chart lr"))
        else:
            charts.append(_none(f"{stage}: no learning-rate values logged"))
        for key, label in (STAGES[stage].curves if stage in STAGES else ()):
            lines = [{"name": str(e.get("variant") or DEFAULT_VARIANT),
                      "color": colors.get(str(e.get("variant") or DEFAULT_VARIANT), PALETTE[0]),
                      "points": series(_list(e.get("log")), key)} for e in runs]
            if any(ln["points"] for ln in lines):
                charts.append(line_chart(f"{stage}: {label}", lines, y_label=label, width=420, height=240,
                                         css_class="chart curve"))
        info_rows = []
        for e in runs:
            info = _dict(e.get("info"))
            tokens, runtime = as_number(info.get("train_tokens")), as_number(info.get("train_runtime_s"))
            tps = tokens / runtime if tokens is not None and runtime else None
            info_rows.append([
                _td(str(e.get("variant") or DEFAULT_VARIANT), "variant"),
                _td(fmt_value(e.get("finetuning", "—"))),
                _num_td(info.get("steps")), _num_td(info.get("train_tokens")),
                _num_td(tps), _num_td(info.get("world_size")),
                _td(fmt_value(info["deepspeed"]) if info.get("deepspeed") else "—"),
                _td(fmt_duration(info.get("train_runtime_s")), "num", sort=runtime),
                _td(fmt_duration(info.get("wall_time_s")), "num", sort=as_number(info.get("wall_time_s"))),
                _td("—" if info.get("resumed_from_step") is None else fmt_value(info["resumed_from_step"]),
                    "num")])
        body.append(f'<h3 id="stage-{esc(stage)}">Stage {esc(stage)}</h3>'
                    f'<div class="charts">{"".join(charts)}</div>'
                    + _table(["variant", "finetuning", "steps", "train tokens", "tokens/s",
                              "world size", "deepspeed", "train runtime", "wall time",
                              "resumed from step"], info_rows, cls="traininfo",
                             numeric={2, 3, 4, 5, 7, 8, 9}))
    return _section("training", "Training curves", "".join(body))


def _tokenization_section(bundle) -> str:
    entries = [e for e in _list(bundle.get("tokenization")) if isinstance(e, dict)]
    if not entries:
        return _section("data", "Data kept, truncated, dropped", _none("none (nothing was tokenized for training)"))
    rows, classes = [], []
    for e in entries:
        pt = e.get("kind") == "pt"
        rows.append([_td(e.get("dataset"), "mono"), _td(e.get("stage")), _td(e.get("split")),
                     _num_td(e.get("records")), _num_td(e.get("kept")),
                     _num_td(e.get("truncated"), "num bad" if e.get("warning") else "num"),
                     _num_td(e.get("dropped"), "num bad" if e.get("warning") else "num"),
                     _td(f"{e.get('blocks')} blocks, {e.get('tokens_dropped_at_end')} tokens left over" if pt
                         else ", ".join(map(str, _list(e.get("examples")))) or "—", "mono")])
        classes.append("warn" if e.get("warning") else "")
    body = ('<p class="hint">Records of each dataset a stage trained on: kept, cut to max_length (stages.&lt;stage&gt;'
            '.truncation) and dropped with nothing trainable left; red: more than data.truncation_warn_fraction of '
            'the split, a warning in the tokenize log. PT rows are blocks of whole documents.</p>'
            + _table(["dataset", "stage", "split", "records", "kept", "truncated", "dropped", "examples / blocks"],
                     rows, cls="tokenization", tid="tokenization-table", numeric={3, 4, 5, 6}, row_classes=classes))
    return _section("data", "Data kept, truncated, dropped", body)


def _reading_section(bundle, directions) -> str:
    """The results in sentences: what each stage was for, whether it did it, what it cost."""
    datasets = _dict(_dict(_dict(bundle.get("configs")).get(DEFAULT_VARIANT)).get("datasets"))
    formats = {name: d.get("format") for name, d in datasets.items() if isinstance(d, dict)} or None
    found = observations(_list(bundle.get("summary")), _dict(bundle.get("stage_bases")), directions, formats)
    if not found:
        return _section("reading", "Reading the results", _none("none (no evaluation results)"))
    items = []
    for o in found:
        against = STAGES[o["against"]].label if o["against"] in STAGES else o["against"]
        head = f'<b>{esc(o["label"])}</b>' + (f' <span class="muted">vs {esc(against)}</span>' if against else "")
        goal = "; ".join(f'<span class="pill {esc(g["cls"])}">{esc(g["text"])}</span>' for g in o["goal"])
        rest = ""
        if o["against"]:
            rest = f" Other numbers: {o['better']} better, {len(o['worse'])} worse"
            if o["worse"]:
                shown = sorted(o["worse"], key=lambda w: -abs(w["new"] - w["old"]) / (abs(w["old"]) or 1.0))[:4]
                rest += " (" + ", ".join(f"{_metric_label(w['dataset'], w['metric'])} {fmt_num(w['old'])} → "
                                         f"{fmt_num(w['new'])}" for w in shown) + ("…" if len(o["worse"]) > 4 else "") + ")"
            rest = esc(rest + ".")
        why = (f'<div class="hint">{esc(o["trade_off"])}</div>' if o["worse"] and o["trade_off"] else "")
        items.append(f"<li>{head}: {goal or esc('no goal metric evaluated')}.{rest}{why}</li>")
    body = ('<p class="hint">Each stage against the model it is compared with (the delta columns of the summary): '
            'first the numbers it exists to improve, then how the others moved, and why a number can get worse.</p>'
            f'<ul class="reading">{"".join(items)}</ul>')
    return _section("reading", "Reading the results", body)


def _branches_section(bundle, colors, directions) -> str:
    """Stages that start from the same model, side by side: their evaluation next to that model's,
    and their training curves (reward, KL, margins, completion length) on shared charts."""
    bases = _dict(bundle.get("stage_bases"))
    groups: dict = {}
    for stage, start in bases.items():
        groups.setdefault(start, []).append(stage)
    groups = {start: sorted(st, key=lambda x: _order_key(x, STAGE_ORDER)) for start, st in groups.items() if len(st) > 1}
    if not groups:
        return _section("branches", "Branches", _none("none (no two stages start from the same model)"))
    pivot = {k[1:]: v for k, v in pivot_summary(_list(bundle.get("summary"))).items() if k[0] == DEFAULT_VARIANT}
    training = [e for e in _list(bundle.get("training")) if isinstance(e, dict)
                and str(e.get("variant") or DEFAULT_VARIANT) == DEFAULT_VARIANT]
    body = []
    for start, stages in groups.items():
        cols = [start] + stages
        rows = []
        for (dataset, metric), values in sorted(pivot.items(), key=lambda kv: (kv[0][0], _order_key(kv[0][1], METRIC_ORDER))):
            if not any(as_number(values.get(s)) is not None for s in stages):
                continue
            ref = as_number(values.get(start))
            row = [_td(dataset), _td(metric, "metric"), _dir_td(metric, directions), _num_td(values.get(start))]
            for s in stages:
                v = as_number(values.get(s))
                if v is None or ref is None:
                    row.append(_num_td(v))
                    continue
                c = delta_class(metric, v - ref, directions)
                row.append(_td(f"{fmt_num(v)} ({fmt_num(v - ref, signed=True)})", f"num delta {c}",
                               title=f"{s}: {v:.6g}, {start}: {ref:.6g}", sort=repr(v)))
            rows.append(row)
        labels = [STAGES[c].label if c in STAGES else c for c in cols]
        body.append(f'<h3>From {esc(labels[0])}: {esc(", ".join(labels[1:]))}</h3>'
                    '<p class="hint">Each branch next to the model it starts from; in brackets its change from it, '
                    'coloured better / worse.</p>'
                    + _table(["dataset", "metric", ""] + labels, rows, cls="branches", tid=f"branches-{start}",
                             numeric=set(range(3, 3 + len(cols)))))
        by_label: dict = {}
        for i, s in enumerate(stages):
            for key, label in STAGES[s].curves:
                name = label.split(" (")[0]
                pts = [p for e in training if e.get("stage") == s for p in series(_list(e.get("log")), key)]
                if pts:
                    by_label.setdefault(name, []).append({"name": STAGES[s].label, "color": PALETTE[(i + 1) % len(PALETTE)],
                                                          "points": pts})
        charts = [line_chart(f"{name} over training", lines, y_label=name, width=420, height=240, css_class="chart branch")
                  for name, lines in by_label.items()]
        body.append(f'<div class="charts">{"".join(charts)}</div>' if charts else _none("no curves logged"))
    return _section("branches", "Branches side by side", "".join(body))


def _clip(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + f"… ({len(text) - ANSWER_CHARS} more characters)"


def _generations_section(bundle) -> str:
    entries = [e for e in _list(bundle.get("generations")) if isinstance(e, dict)]
    if not entries:
        return _section("generations", "Generated answers", _none("none (no generated answers)"))
    body = ['<p class="hint">The first held-out prompts of each dataset: the reference answer and what each model '
            'generated (greedy); the RL reward of an answer in brackets where it was scored. An answer equal to the '
            'reference is marked.</p>']
    for e in entries:
        items = [i for i in _list(e.get("items")) if isinstance(i, dict)]
        models = model_columns({m for i in items for m in _dict(i.get("answers"))})
        rows = []
        for i in items:
            ref = str(i.get("reference") or "")
            row = [_td(_clip(i.get("prompt")), "text"), _td(_clip(ref), "text ref")]
            for m in models:
                answer = _dict(i.get("answers")).get(m)
                reward = as_number(_dict(i.get("rewards")).get(m))
                text = _clip(answer) + (f" [{fmt_num(reward)}]" if reward is not None else "")
                same = answer is not None and str(answer).strip() == ref.strip()
                row.append(_td(text, "text" + (" good" if same else ""), title="equals the reference" if same else ""))
            rows.append(row)
        body.append(f"<h3>{esc(e.get('dataset'))}</h3>"
                    + _table(["prompt", "reference"] + models, rows, cls="generations", sortable=False))
    return _section("generations", "Generated answers", "".join(body))


def _promptcblue_section(bundle) -> str:
    entries = [e for e in _list(bundle.get("promptcblue")) if isinstance(e, dict)]
    if not entries:
        return _section("promptcblue", "PromptCBLUE per task", _none("none (no PromptCBLUE evaluation)"))
    datasets = {str(e.get("dataset", "")) for e in entries}
    cols = sorted({(str(e.get("variant") or DEFAULT_VARIANT), str(e.get("model", "?")),
                    str(e.get("dataset", ""))) for e in entries},
                  key=lambda c: (_variant_key(c[0]), _order_key(c[1], MODEL_ORDER), c[2]))
    scores: dict = {}
    overall: dict = {}
    primary: dict = {}
    for e in entries:
        col = (str(e.get("variant") or DEFAULT_VARIANT), str(e.get("model", "?")), str(e.get("dataset", "")))
        overall[col] = e.get("overall")
        for task, t in _dict(e.get("tasks")).items():
            t = t if isinstance(t, dict) else {"score": t}
            scores[(str(task), col)] = t.get("score")
            if t.get("primary") is not None:
                primary.setdefault(str(task), set()).add(str(t["primary"]))
    tasks = sorted({t for t, _ in scores})
    headers = ["task", "primary metric"] + [
        f"{v} / {m}" + (f" ({d})" if len(datasets) > 1 else "") for v, m, d in cols]
    numeric = set(range(2, len(headers)))

    def row(label, values, metric):
        nums = [as_number(x) for x in values]
        best = max((n for n in nums if n is not None), default=None)
        tds = [_td(label, "task"), _td(metric)]
        for x, n in zip(values, nums):
            extra = " best" if best is not None and n == best and len(cols) > 1 else ""
            tds.append(_num_td(x, "num" + extra))
        return tds

    rows = [row(t, [scores.get((t, c)) for c in cols], ", ".join(sorted(primary.get(t, ()))) or "—")
            for t in tasks]
    rows.append(row("overall", [overall.get(c) for c in cols], "mean"))
    body = ('<p class="hint">Official PromptCBLUE scores; the best column per row is bold.</p>'
            + _table(headers, rows, cls="promptcblue", tid="promptcblue-table", numeric=numeric,
                     row_classes=[""] * (len(rows) - 1) + ["overall"]))
    return _section("promptcblue", "PromptCBLUE per task", body)


def _examples_section(bundle) -> str:
    entries = [e for e in _list(bundle.get("examples")) if isinstance(e, dict)]
    title = "What the model sees"
    if not entries:
        return _section("examples", title, _none("none (no tokenized training data recorded)"))
    body = ['<p class="hint">The first training row of each dataset as the model gets it (after the chat '
            'template and tokenization); <mark>highlighted</mark> text carries loss. '
            '<code>python scripts/show_example.py</code> prints the same in a terminal.</p>']
    for e in entries:
        head = (f"{e.get('dataset')} · stage {e.get('stage')}"
                + (f" · variant {e.get('variant')}" if e.get("variant") != DEFAULT_VARIANT else "")
                + (f" · template {e.get('template')}" if e.get("template") else ""))
        parts = []
        for name, seq in _dict(e.get("sequences")).items():
            seq = _dict(seq)
            text = "".join(f"<mark>{esc(p[0])}</mark>" if p[1] else esc(p[0])
                           for p in _list(seq.get("pieces")) if isinstance(p, list) and len(p) == 2)
            parts.append(f'<div class="hint">{esc(name)}: {fmt_num(seq.get("tokens"))} tokens, '
                         f'{fmt_num(seq.get("label_tokens"))} carry loss</div><pre class="example">{text}</pre>')
        body.append(f"<h3>{esc(head)}</h3>" + "".join(parts))
    return _section("examples", title, "".join(body))


def _config_section(bundle) -> str:
    configs = _dict(bundle.get("configs"))
    if not configs:
        return _section("configs", "Config diff", _none("none (no configs in the bundle)"))
    parts = []
    others = sorted((v for v in configs if v != DEFAULT_VARIANT), key=str)
    if DEFAULT_VARIANT not in configs:
        parts.append(_none("none (no default config to compare against)"))
    elif not others:
        parts.append(_none("none (only the default variant was run)"))
    else:
        for v in others:
            diff = config_diff(configs[DEFAULT_VARIANT], configs[v])
            parts.append(f'<h3>{esc(v)} <span class="muted">vs default</span></h3>')
            if not diff:
                parts.append(_none("none (identical to default)"))
                continue
            rows = [[_td(k, "key"), _td(fmt_value(a), "val" + (" missing" if a is MISSING else "")),
                     _td(fmt_value(b), "val" + (" missing" if b is MISSING else ""))] for k, a, b in diff]
            parts.append(_table(["key", "default", str(v)], rows, cls="configdiff"))
    for v in sorted(configs, key=_variant_key):
        flat = flatten_config(configs[v])
        rows = [[_td(k, "key"), _td(fmt_value(x), "val")] for k, x in sorted(flat.items())]
        parts.append(f"<details><summary>Full effective config: {esc(v)} ({len(flat)} keys)</summary>"
                     + (_table(["key", "value"], rows, cls="configfull") if rows else _none())
                     + "</details>")
    return _section("configs", "Config diff", "".join(parts))


def _kv_table(d: dict, cls: str = "kv") -> str:
    if not d:
        return _none()
    rows = [[_td(k, "key"), _td(fmt_value(v), "val")] for k, v in sorted(d.items(), key=lambda kv: str(kv[0]))]
    return _table(["name", "value"], rows, cls=cls, sortable=False)


def _provenance_section(bundle) -> str:
    prov = _dict(bundle.get("provenance"))
    if not prov:
        return _section("provenance", "Provenance", _none("none (no provenance recorded)"))
    parts = []
    dirty = prov.get("git_dirty")
    parts.append("<h3>Code</h3>" + _table(["", ""], [
        [_td("git commit", "key"), _td(fmt_value(prov.get("git_commit") or "unknown"), "mono")],
        [_td("uncommitted changes", "key"),
         _td("unknown" if dirty is None else ("yes (dirty)" if dirty else "no"),
             "bad" if dirty else "")]], cls="kv", sortable=False))
    parts.append("<h3>Packages</h3>" + _kv_table(_dict(prov.get("packages"))))
    hw = _dict(prov.get("hardware"))
    hw_rows = []
    for k, v in sorted(hw.items(), key=lambda kv: str(kv[0])):
        if k == "gpus" and isinstance(v, list):
            v = "none" if not v else "; ".join(
                fmt_value(g) if not isinstance(g, dict) else
                ", ".join(f"{gk}={fmt_value(gv)}" for gk, gv in g.items()) for g in v)
        hw_rows.append([_td(k, "key"), _td(fmt_value(v), "val")])
    parts.append("<h3>Hardware</h3>" + (_table(["name", "value"], hw_rows, cls="kv", sortable=False)
                                        if hw_rows else _none()))
    drows = []
    for d in _list(prov.get("data")):
        if not isinstance(d, dict):
            continue
        files = [f for f in _list(d.get("files")) if isinstance(f, dict)] or [{}]
        for i, f in enumerate(files):
            drows.append([_td(fmt_value(d.get("dataset", "?")) if i == 0 else ""),
                          _td(fmt_value(f.get("path", "—")), "mono"),
                          _td(fmt_value(f.get("sha256", "—")), "mono sha"),
                          _num_td(d.get("kept")) if i == 0 else _td(""),
                          _num_td(d.get("dropped")) if i == 0 else _td("")])
    parts.append("<h3>Data</h3>" + (_table(["dataset", "file", "sha256", "kept", "dropped"], drows,
                                           cls="data", numeric={3, 4}, sortable=False)
                                    if drows else _none()))
    wrows, total = [], 0.0
    for w in _list(prov.get("wall_time")):
        if not isinstance(w, dict):
            continue
        s = as_number(w.get("seconds"))
        total += s or 0.0
        wrows.append([_td(str(w.get("variant") or DEFAULT_VARIANT), "variant"),
                      _td(fmt_value(w.get("stage", "?"))),
                      _td(fmt_duration(s), "num", title="" if s is None else f"{s:.1f} s", sort=s)])
    if wrows:
        wrows.append([_td("total"), _td(""), _td(fmt_duration(total), "num")])
    parts.append("<h3>Wall time per stage</h3>" + (
        _table(["variant", "stage", "wall time"], wrows, cls="walltime", numeric={2}, sortable=False,
               row_classes=[""] * (len(wrows) - 1) + ["overall"])
        if wrows else _none()))
    return _section("provenance", "Provenance", "".join(parts))


CSS = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#d9dee5;--zebra:#f5f7fa;--head:#eef1f5;
 --good:#e3f3e6;--goodfg:#0f6b2a;--bad:#fbe5e3;--badfg:#a31912;--accent:#1f5fbf}
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
 "Noto Sans","Liberation Sans",sans-serif;color:var(--fg);background:#fff;line-height:1.45;font-size:15px}
main{max-width:1240px;margin:0 auto;padding:24px 28px 64px}
header{border-bottom:2px solid var(--line);padding-bottom:12px;margin-bottom:8px}
h1{font-size:1.7em;margin:0 0 4px} h2{font-size:1.3em;margin:36px 0 10px;padding-bottom:4px;
 border-bottom:1px solid var(--line)} h3{font-size:1.05em;margin:22px 0 8px}
.meta{color:var(--muted);font-size:.92em} .meta b{color:var(--fg);font-weight:600}
nav{margin:10px 0 0;font-size:.92em} nav a{color:var(--accent);margin-right:14px;text-decoration:none}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:120px}
.card .k{color:var(--muted);font-size:.8em;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:1.25em;font-weight:600;font-variant-numeric:tabular-nums}
.tablewrap{overflow-x:auto;margin:6px 0 12px}
table{border-collapse:collapse;font-size:.9em}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{background:var(--head);font-weight:600;white-space:nowrap;position:sticky;top:0}
table.sortable thead th{cursor:pointer} table.sortable thead th:hover{background:#e2e7ee}
tbody tr:nth-child(even){background:var(--zebra)} tr.group td{border-top:2px solid #b9c1cc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.missing{color:#a0a8b3}
td.good,.pill.good{background:var(--good);color:var(--goodfg)}
td.bad,.pill.bad{background:var(--bad);color:var(--badfg)}
td.same{color:var(--muted)}
.pill{padding:1px 6px;border-radius:4px}
td.dir{color:var(--muted);text-align:center}
td.variant,td.metric{font-weight:600}
td.best{font-weight:700} tr.overall td{font-weight:700;border-top:2px solid #b9c1cc}
td.mono,td.key,td.val{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;
 font-size:.92em;word-break:break-all} td.sha{font-size:.8em;color:var(--muted)}
.none{color:var(--muted);font-style:italic}
.hint{color:var(--muted);font-size:.88em;margin:4px 0}
.muted{color:var(--muted);font-weight:400}
.dirty{background:var(--bad);color:var(--badfg);padding:1px 6px;border-radius:4px;font-size:.85em}
.clean{background:var(--good);color:var(--goodfg);padding:1px 6px;border-radius:4px;font-size:.85em}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
svg.chart{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
svg .plot{fill:#fbfcfd;stroke:none} svg .grid{stroke:#e6e9ee;stroke-width:1}
svg .axis{stroke:#8a94a3;stroke-width:1} svg text{font-family:inherit;fill:var(--fg)}
svg .tick{font-size:11px;fill:var(--muted)} svg .alabel{font-size:12px;fill:var(--muted)}
svg .ctitle{font-size:13px;font-weight:600} svg .legend{font-size:11.5px}
details{margin:8px 0} summary{cursor:pointer;color:var(--accent)}
pre.example{white-space:pre-wrap;word-break:break-all;background:var(--zebra);border:1px solid var(--line);
 border-radius:6px;padding:8px 10px;font-size:.85em;max-height:24em;overflow:auto}
pre.example mark{background:var(--good);color:var(--goodfg)}
ul.reading li{margin:6px 0} td.text{white-space:pre-wrap;max-width:320px;word-break:break-word}
td.ref{color:var(--muted)}
footer{margin-top:40px;color:var(--muted);font-size:.85em}
@media print{thead th{position:static} nav{display:none}}
"""

# Click a header to sort by that column (numbers by their exact `data-v`, text otherwise).
# Optional: without JS the tables are shown in the order they were written.
JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
  var b=t.tBodies[0],rs=Array.prototype.slice.call(b.rows),asc=th.dataset.asc!=='1';
  t.querySelectorAll('thead th').forEach(function(h){delete h.dataset.asc});th.dataset.asc=asc?'1':'0';
  function k(r){var c=r.cells[i];if(!c)return'';var v=c.getAttribute('data-v');
   return v!==null&&v!==''&&!isNaN(+v)?+v:c.textContent.trim().toLowerCase()}
  rs.sort(function(a,b){var x=k(a),y=k(b);if(typeof x!==typeof y){x=String(x);y=String(y)}
   return (x<y?-1:x>y?1:0)*(asc?1:-1)});rs.forEach(function(r){r.classList.remove('group');b.appendChild(r)})})})});
"""

CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "img-src data:; font-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'")


def _header(bundle, colors) -> str:
    title = str(bundle.get("title") or "tuneflow report")
    prov = _dict(bundle.get("provenance"))
    commit = prov.get("git_commit")
    dirty = prov.get("git_dirty")
    badge = ('<span class="dirty">dirty</span>' if dirty else
             '<span class="clean">clean</span>' if dirty is False else "")
    training = [e for e in _list(bundle.get("training")) if isinstance(e, dict)]
    stages = sorted({str(e.get("stage")) for e in training}, key=lambda s: _order_key(s, STAGE_ORDER))
    datasets = sorted({str(r.get("dataset")) for r in _list(bundle.get("summary"))
                       if isinstance(r, dict) and r.get("dataset") is not None})
    wall = sum(as_number(w.get("seconds")) or 0.0 for w in _list(prov.get("wall_time"))
               if isinstance(w, dict))
    cards = [("variants", ", ".join(colors) or "none"), ("stages trained", ", ".join(stages) or "none"),
             ("datasets", ", ".join(datasets) or "none"),
             ("total wall time", fmt_duration(wall) if wall else "—")]
    return (f"<header><h1>{esc(title)}</h1><div class=\"meta\">generated "
            f"<b>{esc(bundle.get('generated_at') or 'unknown')}</b> · git commit "
            f"<b class=\"mono\">{esc(commit or 'unknown')}</b> {badge}</div>"
            '<div class="cards">' + "".join(
                f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div></div>'
                for k, v in cards) + "</div>"
            '<nav><a href="#reading">Reading the results</a><a href="#summary">Summary</a>'
            '<a href="#branches">Branches</a><a href="#generations">Generated answers</a>'
            '<a href="#training">Training curves</a><a href="#data">Data</a>'
            '<a href="#promptcblue">PromptCBLUE</a><a href="#examples">Examples</a><a href="#configs">Config diff</a>'
            '<a href="#provenance">Provenance</a></nav></header>')


def render_html(bundle: dict) -> str:
    """The whole report page as one self-contained HTML string."""
    bundle = bundle if isinstance(bundle, dict) else {}
    directions = (_dict(bundle.get("metric_direction")) if "metric_direction" in bundle
                  else DEFAULT_METRIC_DIRECTION)
    colors = _variant_colors(bundle)
    title = str(bundle.get("title") or "tuneflow report")
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="referrer" content="no-referrer">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(bundle, colors),
        _reading_section(bundle, directions),
        _summary_section(bundle, directions),
        _branches_section(bundle, colors, directions),
        _generations_section(bundle),
        _training_section(bundle, colors),
        _tokenization_section(bundle),
        _promptcblue_section(bundle),
        _examples_section(bundle),
        _config_section(bundle),
        _provenance_section(bundle),
        "<footer>Self-contained page written by tuneflow.report; no network resources.</footer>",
        f"</main><script>{JS}</script></body></html>\n",
    ])


def write_report(bundle: dict, path) -> Path:
    """Render, then write atomically (tuneflow.io.atomic_file): a failure while rendering or
    writing leaves any previous page untouched."""
    path = Path(path)
    page = render_html(bundle)  # before touching the disk: a render error writes nothing
    with atomic_file(path) as f:
        f.write(page)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Render a tuneflow report bundle (JSON) to HTML.")
    ap.add_argument("bundle", help="report bundle JSON")
    ap.add_argument("out", help="output HTML path, e.g. results/report/index.html")
    args = ap.parse_args(argv)
    with open(args.bundle, encoding="utf-8") as f:
        bundle = json.load(f)
    write_report(bundle, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

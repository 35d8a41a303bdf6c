"""LLaMA-Factory's dataset registry (data/dataset_info.json) -> tuneflow dataset settings.

A user points `datasets.<name>.path` at their LLaMA-Factory data folder (or its dataset_info.json),
sets `format: llamafactory` and picks an entry with `dataset: <entry name>`. The entry's
`file_name`, `formatting` (alpaca / sharegpt), `ranking`, `columns` and `tags` become the path,
format, column mapping and turn tags of an ordinary dataset, resolved when the config is read, so
everything after (planning, the convert job, the manifest) sees one. Entries that would download
(hf_hub_url, ms_hub_url, script_url, cloud_file_name) and multimodal or KTO columns are refused.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from tuneflow.errors import ConfigError

REGISTRY = "dataset_info.json"
# LLaMA-Factory column -> tuneflow's canonical field
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "tools": "tools", "chosen": "chosen", "rejected": "rejected"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools", "chosen": "chosen",
                    "rejected": "rejected"}
REMOTE = ("hf_hub_url", "ms_hub_url", "script_url", "cloud_file_name")
UNSUPPORTED_COLUMNS = {"images": "multimodal", "videos": "multimodal", "audios": "multimodal", "kto_tag": "KTO"}
TAG_KEYS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")


def registry_in(path) -> Path | None:
    """The dataset_info.json `path` is, or holds; None if neither."""
    p = Path(path)
    if p.name == REGISTRY and p.is_file():
        return p
    if p.is_dir() and (p / REGISTRY).is_file():
        return p / REGISTRY
    return None


def resolve(ds: dict, key: str, text_only_stages: bool) -> dict:
    """The settings of `ds` (format: llamafactory, path, dataset) as an ordinary dataset: path,
    format, columns (the user's own win), tags, and `llamafactory` (where they came from).
    `text_only_stages`: every stage the dataset feeds trains on plain text (PT)."""
    registry = registry_in(ds["path"])
    if registry is None:
        raise ConfigError(f"{key}.path", f"'{ds['path']}' is neither LLaMA-Factory's {REGISTRY} nor a folder holding "
                                         f"one (format: llamafactory)")
    name = ds.get("dataset")
    try:
        entries = json.loads(registry.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{key}.path", f"cannot read {registry}: {e}") from None
    if not isinstance(entries, dict):
        raise ConfigError(f"{key}.path", f"{registry} must map dataset names to their descriptions")
    if not name:
        raise ConfigError(f"{key}.dataset", f"format llamafactory needs the entry of {registry} to read "
                                            f"(one of: {', '.join(sorted(entries)[:20])})")
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=1)
        raise ConfigError(f"{key}.dataset", f"'{name}' is not in {registry}" +
                          (f"; did you mean '{close[0]}'?" if close else f" (it has: {', '.join(sorted(entries)[:20])})"))
    entry = entries[name]
    where = f"{registry} entry '{name}'"
    if not isinstance(entry, dict):
        raise ConfigError(f"{key}.dataset", f"{where} must be an object")
    remote = [k for k in REMOTE if entry.get(k)]
    if remote and not entry.get("file_name"):
        raise ConfigError(f"{key}.dataset", f"{where} is read from {remote[0]} ('{entry[remote[0]]}'); tuneflow reads "
                                            "local files only: download it and give its file_name")
    if not entry.get("file_name"):
        raise ConfigError(f"{key}.dataset", f"{where} has no file_name")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for column, what in UNSUPPORTED_COLUMNS.items():
        if column in columns:
            raise ConfigError(f"{key}.dataset", f"{where} is a {what} dataset (column '{column}'), which tuneflow does not train")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise ConfigError(f"{key}.dataset", f"{where} has formatting '{formatting}' (expected alpaca or sharegpt)")
    ranking = bool(entry.get("ranking"))
    mapping = ALPACA_COLUMNS if formatting == "alpaca" else SHAREGPT_COLUMNS
    ours = {mapping[c]: v for c, v in columns.items() if c in mapping and v}
    file = registry.parent / entry["file_name"]
    if ranking:
        fmt = "preference"
    elif formatting == "sharegpt":
        fmt = "sharegpt"
    elif text_only_stages:
        # Pre-training reads the prompt column only (LLaMA-Factory's default: instruction); a .txt
        # file is plain text, one document per line.
        fmt = "text"
        ours = {} if str(file).endswith((".txt", ".txt.gz")) else {"text": columns.get("prompt", "instruction")}
    else:
        fmt = "alpaca"
    return {**ds, "path": str(file), "format": fmt, "columns": {**ours, **(ds.get("columns") or {})},
            "tags": {**{k: v for k, v in tags.items() if k in TAG_KEYS}, **(ds.get("tags") or {})},
            "llamafactory": {"registry": str(registry), "dataset": name, "entry": entry}}

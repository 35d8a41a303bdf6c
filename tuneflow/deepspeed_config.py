"""DeepSpeed JSON files a stage may name: a preset of config/deepspeed/ or a path of the user's."""

from __future__ import annotations

import os
from pathlib import Path

PRESETS_DIR = Path(__file__).resolve().parent.parent / "config" / "deepspeed"
PRESETS = ("zero2", "zero3", "zero3_offload")


def deepspeed_config_path(value):
    """The JSON file `stages.<stage>.deepspeed` names (None when the stage runs without DeepSpeed)."""
    if not value:
        return None
    if value in PRESETS:
        return str(PRESETS_DIR / f"{value}.json")
    return os.path.abspath(value)

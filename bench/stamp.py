"""What every benchmark's JSON carries: the machine, torch's version and the day; and how it is written."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch


def stamp() -> dict:
    return {
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def write(path, result: dict, shown) -> None:
    """The whole result to `path` as JSON; `shown` (its summary) to stdout."""
    Path(path).write_text(json.dumps(result, indent=2))
    print(json.dumps(shown, indent=2))

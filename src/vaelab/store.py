"""Atomic file writes and the layout of a run directory (config, metrics, checkpoint, eval)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from . import VaelabError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
EVAL = "eval.json"
ERROR = "error.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete temp files that an atomic write killed mid-way (SIGKILL, power loss) left behind in `folder`.

    Call it only where this process is the folder's one writer (a run being started or resumed)."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise VaelabError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise VaelabError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run_dir(run_dir: Path) -> Path:
    """A run directory is one that holds a config.json written by vaelab; anything else is refused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VaelabError(f"{run_dir}: no such run directory")
    if not (run_dir / CONFIG).is_file():
        raise VaelabError(f"{run_dir}: not a vaelab run directory (no {CONFIG})")
    return run_dir


def ensure_writable_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VaelabError(f"{path}: cannot create output directory ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise VaelabError(f"{path}: output directory is not writable")
    return path

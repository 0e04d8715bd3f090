"""Shareable models: one self-describing safetensors file (weights, config, dataset facts; no pickle) and its loader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    atomic_write_json,
    atomic_write_text,
    check_new_target,
    load_tree,
    save_tree,
)
from vaelab.data import cache_dir
from vaelab.models import build
from vaelab.runs.checkpoint import CHECKPOINT_FORMAT
from vaelab.runs.config import from_dict
from vaelab.runs.run import Run
from vaelab.version import __version__

FORMAT = "vaelab-model"
VERSION = 1  # bump when the layout changes; older files then say which vaelab wrote them


def dataset_facts(cfg, ckpt) -> dict:
    """What an exported model says about its data: name, image shape, classes and pixel levels."""
    try:
        levels = vdata.spec(cfg.dataset).levels
    except VaelabError:  # a user's npz that is not here any more: the checkpoint still knows shape and classes
        levels = 256
    return {"name": cfg.dataset, "shape": list(ckpt["shape"]), "classes": list(ckpt["classes"]), "levels": levels}


def export(run_dir, path, force: bool = False) -> Path:
    """Write a run's model (what evaluation reads: its EMA or best epoch) to one file anyone can load safely; an
    existing file is replaced only with `force`."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise VaelabError(f"{path}: an exported model is a .safetensors file")
    check_new_target(path, force)
    cfg, model, ckpt = Run(run_dir).load()
    save_tree(
        path,
        {
            "format": FORMAT,
            "version": VERSION,
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "dataset": dataset_facts(cfg, ckpt),
            "trained": {"epoch": ckpt["epoch"], "history": ckpt["history"]},
            "versions": {"vaelab": __version__, "torch": torch.__version__},
        },
    )
    return path


def is_export(path) -> bool:
    return Path(path).is_file() and Path(path).suffix == ".safetensors"


def unpack(path) -> Path:
    """An exported file as a run directory, so that every command that takes a run takes the file too: unpacked
    once (atomically) under the user cache, keyed by the file's content, and reused. Outputs (eval.json, figures,
    a report) land there; the commands print where. It holds no optimizer state, so it cannot resume training."""
    path = Path(path)
    load(path)  # validated like any load: format, version, weights that fit the config
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    run = cache_dir() / "models" / f"{path.stem[:60]}-{digest}"
    if Run(run, check=False).checkpoint_path.is_file():
        return run
    blob = load_tree(path)
    trained = blob.get("trained", {})
    history = trained.get("history", [])
    atomic_write_json(Run(run, check=False).config_path, blob["config"])
    atomic_write_text(Run(run, check=False).metrics_path, "".join(json.dumps(r) + "\n" for r in history))
    save_tree(
        Run(run, check=False).checkpoint_path,
        {  # written last: its presence means the directory is complete
            "format": CHECKPOINT_FORMAT,
            "config": blob["config"],
            "epoch": int(trained.get("epoch", 0)),
            "step": 0,
            "bad_steps": 0,
            "model": blob["model"],
            "history": history,
            "shape": blob["dataset"]["shape"],
            "classes": blob["dataset"]["classes"],
            "versions": blob.get("versions", {}),
            "exported_from": str(path),
        },
    )
    return run


def load(path, device: str = "cpu"):
    """An exported model in eval mode; `.config`, `.classes` and `.dataset` say what it is. Only JSON and raw
    tensor bytes are read, so loading a file from anyone cannot run code."""
    path = Path(path)
    if not path.is_file():
        raise VaelabError(f"{path}: no such file")
    blob = load_tree(path)
    if blob.get("format") != FORMAT:
        raise VaelabError(
            f"{path}: not an exported vaelab model (a run directory's checkpoint is loaded through the run directory)"
        )
    if blob.get("version") != VERSION:
        raise VaelabError(
            f"{path}: exported model format {blob.get('version')} (vaelab "
            f"{blob.get('versions', {}).get('vaelab', '?')}); this vaelab reads format {VERSION}"
        )
    cfg = from_dict(blob["config"])
    ds = blob["dataset"]
    model = build(cfg, tuple(ds["shape"]), len(ds["classes"]))
    try:
        model.load_state_dict(blob["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise VaelabError(
            f"{path}: its weights do not fit the model its config describes ({str(e).splitlines()[0][:200]})"
        ) from None
    model.config, model.classes, model.dataset = cfg, list(ds["classes"]), ds
    return model.to(device).eval()

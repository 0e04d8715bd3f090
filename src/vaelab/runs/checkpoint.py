"""Checkpoints: safetensors + JSON (never a pickle), the model rebuilt from its stored config (nanoGPT), and the
bytes a model needs (checked against the device before anything is allocated)."""

from __future__ import annotations

from pathlib import Path

import torch

from vaelab.core.device import check_fits
from vaelab.core.errors import VaelabError
from vaelab.core.store import CHECKPOINT, LEGACY_CHECKPOINT, load_tree, save_tree
from vaelab.models import VAE
from vaelab.models import build as build_model
from vaelab.runs.config import TrainConfig, from_dict

CHECKPOINT_FORMAT = 2  # 1: vaelab 0.1's pickle (checkpoint.pt), refused; 2: safetensors + JSON skeleton


def legacy_message(path: Path) -> str:
    return (
        f"{path} is a checkpoint of vaelab 0.1 (a pickle, which can run code when loaded); vaelab no longer loads "
        f"those. If you trust where it came from, convert it: vaelab convert {path.parent} --i-trust-this-file"
    )


def load_checkpoint(run_dir: Path) -> dict:
    """Read RUN/checkpoint.safetensors: tensors and JSON only, so loading one can never execute code."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        if (Path(run_dir) / LEGACY_CHECKPOINT).is_file():
            raise VaelabError(legacy_message(Path(run_dir) / LEGACY_CHECKPOINT))
        raise VaelabError(f"{run_dir}: no checkpoint (was the run trained?)")
    return read_checkpoint_file(path)


def read_checkpoint_file(path: Path) -> dict:
    """A checkpoint or a snapshot file, its layout checked."""
    ckpt = load_tree(path)
    need = {"format": int, "config": dict, "epoch": int, "model": dict, "history": list, "shape": list, "classes": list}
    for key, kind in need.items():
        if not isinstance(ckpt.get(key), kind):
            raise VaelabError(f"{path}: not a vaelab checkpoint (no valid '{key}')")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise VaelabError(
            f"{path}: checkpoint format {ckpt['format']} is not one this vaelab reads "
            f"({CHECKPOINT_FORMAT}); it was written by vaelab {ckpt.get('versions', {}).get('vaelab', '?')}"
        )
    if len(ckpt["shape"]) != 3 or not all(isinstance(v, int) and v > 0 for v in ckpt["shape"]):
        raise VaelabError(f"{path}: not a vaelab checkpoint (bad image shape {ckpt['shape']})")
    return ckpt


def save_snapshot(path: Path, ckpt: dict) -> None:
    """A model kept along training (TrainConfig.snapshots): the checkpoint's layout with only the evaluated
    weights, no optimiser and no history, so evaluation reads it like a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tree(path, {"format": CHECKPOINT_FORMAT, **ckpt, "history": []})


def load_snapshot(path: Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, VAE, dict]:
    if not Path(path).is_file():
        raise VaelabError(f"{path}: no such snapshot")
    ckpt = read_checkpoint_file(Path(path))
    return _rebuilt(ckpt, "model", Path(path), device)


def save_checkpoint(run_dir: Path, ckpt: dict) -> None:
    save_tree(Path(run_dir) / CHECKPOINT, {"format": CHECKPOINT_FORMAT, **ckpt})


def convert_legacy(run_dir: Path, trust: bool) -> Path:
    """Rewrite a vaelab 0.1 checkpoint.pt as checkpoint.safetensors. Unpickling runs whatever the file says,
    so this happens only when the user states they trust the file; the old file is kept."""
    run_dir = Path(run_dir)
    old = run_dir / LEGACY_CHECKPOINT
    if not old.is_file():
        raise VaelabError(f"{run_dir}: no {LEGACY_CHECKPOINT} to convert")
    if (run_dir / CHECKPOINT).is_file():
        raise VaelabError(f"{run_dir}: already holds {CHECKPOINT}; nothing to convert")
    if not trust:
        raise VaelabError(
            f"{old}: converting unpickles the file, which runs any code it holds; "
            "pass --i-trust-this-file if you know where it came from"
        )
    try:
        blob = torch.load(old, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a foreign or damaged file: say so in one line
        raise VaelabError(f"{old}: cannot read checkpoint ({type(e).__name__})") from None
    if not isinstance(blob, dict) or not {"config", "model", "epoch", "history", "shape", "classes"} <= set(blob):
        raise VaelabError(f"{old}: not a vaelab 0.1 checkpoint")
    rng = blob.get("rng") or {}
    blob["rng"] = {"torch": rng.get("torch"), "batches": rng.get("batches"), "cuda": rng.get("cuda")}
    blob.setdefault("bad_in_row", 0)
    save_checkpoint(run_dir, {k: v for k, v in blob.items() if k != "format"})
    load_model(run_dir)  # the converted file must load, or it is no conversion
    return run_dir / CHECKPOINT


WEIGHTS = ("model", "train_model")  # what evaluation reads (EMA / best epoch), and the raw latest weights


def load_model(
    run_dir: Path, device: str | torch.device = "cpu", weights: str = "model"
) -> tuple[TrainConfig, VAE, dict]:
    """Rebuild the model from the config stored in its checkpoint (nanoGPT-style) and load its weights: `model`
    (what evaluation reads), or `train_model` (the raw latest weights of a run with --ema or --patience)."""
    ckpt = load_checkpoint(run_dir)
    path = Path(run_dir) / CHECKPOINT
    if weights not in WEIGHTS:
        raise VaelabError(f"unknown weights '{weights}' (known: {', '.join(WEIGHTS)})")
    if weights not in ckpt:
        raise VaelabError(
            f"{path}: holds no separate raw weights (the run trained without --ema or --patience, "
            "so its model is its raw weights)"
        )
    return _rebuilt(ckpt, weights, path, device)


def _rebuilt(ckpt: dict, weights: str, path: Path, device) -> tuple[TrainConfig, VAE, dict]:
    """The model its stored config describes, with the weights `weights` of `ckpt` loaded."""
    cfg = from_dict(ckpt["config"])
    check_fits(model_bytes(cfg, tuple(ckpt["shape"]), len(ckpt["classes"])), "the checkpoint's model", device)
    model = build_model(cfg, tuple(ckpt["shape"]), len(ckpt["classes"]))
    try:
        model.load_state_dict(ckpt[weights])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VaelabError(f"{path}: its weights do not fit the model its config describes ({first[:200]})") from None
    model.to(device).eval()
    return cfg, model, ckpt


def model_bytes(cfg: TrainConfig, shape: tuple[int, int, int], num_classes: int, batch_size: int = 0) -> int:
    """Bytes a model needs: parameters (built on the meta device, so nothing is allocated), with batch_size > 0
    also gradients, two Adam moments and a generous bound on one batch's activations."""
    with torch.device("meta"):
        n_params = sum(p.numel() for p in build_model(cfg, shape, num_classes).parameters())
    if not batch_size:
        return 4 * n_params
    n_dims = shape[0] * shape[1] * shape[2]
    activations = batch_size * (64 * n_dims + 8 * cfg.latent_dim + 4096)  # floats kept for backward, padded
    return 4 * (4 * n_params + activations)

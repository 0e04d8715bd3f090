"""What a run's budget and start need checked before anything is written: the directory, device, data and memory, the steps a budget buys and a step's FLOPs."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from vaelab import data as vdata
from vaelab.core.device import bf16_native, check_fits, resolve_device
from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    check_can_create,
)
from vaelab.models.losses import draws, objective
from vaelab.runs.checkpoint import load_checkpoint, model_bytes
from vaelab.runs.config import TrainConfig, config_diff, from_dict, parse_budget, snapshot_fractions
from vaelab.runs.run import Run


class EmulatedBf16Warning(UserWarning):
    """bf16 autocast asked of a device that emulates bf16: the run trains as asked, much slower than in fp32."""


EMULATED_BF16 = (
    "bf16 autocast on a {device} without native bf16 (a CPU without avx512_bf16 or AMX, a GPU without bf16 support): "
    "bf16 is emulated here and a step can take 10x its fp32 time; --no-bf16 trains in fp32"
)


def check_start(cfg: TrainConfig, out: Path, data_dir=None, resume: bool = False, dataset=None) -> tuple:
    """What can fail on bad input before training writes anything: the directory, device, data, splits and memory.
    Returns (device, dataset, splits)."""
    if Run(out, check=False).holds_run() and not resume:
        raise VaelabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    check_can_create(out)
    device = resolve_device(cfg.device)
    if cfg.bf16 and not bf16_native(device):
        warnings.warn(EMULATED_BF16.format(device=device.type), EmulatedBf16Warning, stacklevel=3)
    ds = dataset if dataset is not None else vdata.load(cfg.dataset, data_dir)
    splits = vdata.make_splits(ds, cfg.val_size, cfg.train_size, cfg.test_size, device)
    check_snapshot_steps(cfg, planned_steps(cfg, len(splits["train"])))
    check_fits(
        model_bytes(cfg, ds.shape, len(ds.classes), min(cfg.batch_size, len(splits["train"]))),
        "training this model",
        device,
    )
    return device, ds, splits


def planned_steps(cfg: TrainConfig, n_train: int) -> int | None:
    """The optimiser steps a run will take, where its config alone says (epochs, a steps or images budget); None
    for a FLOP budget (its model counts them) or a time budget."""
    if cfg.time_budget or (cfg.budget and parse_budget(cfg.budget)[1] == "flops"):
        return None
    return budget_steps(cfg, None, None) or cfg.epochs * math.ceil(n_train / cfg.batch_size)


def check_snapshot_steps(cfg: TrainConfig, total: int | None) -> None:
    """Two snapshot fractions that fall on the same optimiser step would keep the same model twice: refused. A
    snapshot is kept after the first step at which step / total reaches its fraction."""
    fractions = snapshot_fractions(cfg.snapshots)
    if total is None or len(fractions) < 2:
        return
    steps = [math.ceil(f * total - 1e-9) for f in fractions]
    for (f1, s1), (f2, s2) in zip(zip(fractions, steps), zip(fractions[1:], steps[1:])):
        if s1 == s2:
            raise VaelabError(
                f"snapshots {f1:g} and {f2:g} both fall on step {s1} of {total}: give fractions at least "
                f"1/{total} apart"
            )


def check_launch(cfg: TrainConfig, out: Path, data_dir=None, resume: bool = False) -> None:
    """check_start, and that a run to resume has the same config: what `--nproc N` checks once before it starts
    N processes, so that bad input gets one line and no process."""
    check_start(cfg, Path(out), data_dir, resume)
    if resume:
        _stored_checkpoint(cfg, Path(out))


# ---------------------------------------------------------------- budgets that mean the same on every machine


def budget_steps(cfg: TrainConfig, model: torch.nn.Module | None, split: vdata.Split | None) -> int | None:
    """The optimiser steps a count budget allows (None without one): steps as given, images over the batch size,
    FLOPs over the FLOPs of one training step (only these need the model and its split). Counts, unlike seconds, train the same model however fast or busy
    the machine is."""
    if not cfg.budget:
        return None
    amount, unit = parse_budget(cfg.budget)
    if unit == "steps":
        return int(amount)
    if unit == "images":
        return math.ceil(amount / cfg.batch_size)
    return max(1, int(amount // step_flops(cfg, model, split)))


def step_flops(cfg: TrainConfig, model: torch.nn.Module, split: vdata.Split) -> int:
    """FLOPs of one training step (the model's forward, the objective and the backward pass) at the run's batch
    size, counted by torch.utils.flop_counter on a copy of the model: shapes decide them, not the machine. A
    critic's or a perceptual network's FLOPs are not counted."""
    probe = copy.deepcopy(model).train()
    x = split.x[: cfg.batch_size]
    y = split.y[: cfg.batch_size] if cfg.conditional else None
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        objective(probe(x, y, **draws(cfg)), cfg.beta, cfg, 0.0, n_data=len(split)).backward()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- one run


def _stored_checkpoint(cfg: TrainConfig, out: Path) -> dict | None:
    """The run's checkpoint when it continues one (same config, not an unpacked export), else None."""
    run = Run(out, check=False)
    if not (run.checkpoint_path.exists() or run.legacy_checkpoint_path.exists()):
        return None
    ckpt = load_checkpoint(out)
    if "exported_from" in ckpt:
        raise VaelabError(
            f"{out}: a model unpacked from {ckpt['exported_from']} (vaelab export) for evaluation; "
            "it holds no optimizer state, so training cannot continue from it"
        )
    stored = from_dict(ckpt["config"])
    if stored != cfg:
        raise VaelabError(f"{out}: resume with a different config than the run's ({config_diff(stored, cfg)})")
    return ckpt

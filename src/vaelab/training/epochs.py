"""What every trainer shares (train's loop and multirun's stacked one): the gradient guard and clipping, an epoch's row and checkpoint record, divergence, the EMA's decay and early stopping's bookkeeping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    atomic_write_text,
)
from vaelab.models import VAE
from vaelab.runs.checkpoint import (
    save_checkpoint,
)
from vaelab.runs.config import TrainConfig
from vaelab.runs.run import Run
from vaelab.training.classifier import reference_classifier
from vaelab.training.optim import lr_factor
from vaelab.version import __version__


class TrainingDiverged(VaelabError):
    pass


@torch.no_grad()
def average_terms(model: VAE, split: vdata.Split, batch_size: int = 1000) -> dict[str, float]:
    """Mean recon, KL and negative ELBO (nats per image) over a split, one posterior sample per image."""
    model.eval()
    sums = torch.zeros(3, device=split.x.device, dtype=torch.float64)
    for idx in vdata.minibatches(len(split), batch_size, device=split.x.device, shuffle=False):
        t = model(split.x[idx], split.y[idx] if model.num_classes else None)
        sums += torch.stack([t["recon"].sum(), t["kl"].sum(), (t["recon"] + t["kl"]).sum()]).double()
    recon, kl, nelbo = (sums / max(len(split), 1)).tolist()
    return {"recon": recon, "kl": kl, "neg_elbo": nelbo}


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def _clip(params: list[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale gradients to max_norm; unlike clip_grad_norm_, no pass over them when the norm is already below it."""
    if float(norm) <= max_norm:
        return
    if hasattr(torch.nn.utils, "clip_grads_with_norm_"):  # torch >= 2.6
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_norm)


def write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per finished epoch, rewritten whole (atomically) from the run's history."""
    atomic_write_text(Run(out, check=False).metrics_path, "".join(json.dumps(r) + "\n" for r in history))


def _rng_state(gen: torch.Generator) -> dict:
    return {
        "torch": torch.get_rng_state(),
        "batches": gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batches"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _perceptual_features(cfg: TrainConfig, ds: vdata.Dataset, device: torch.device):
    """The reference classifier's feature map, frozen, on the training device (trained once and cached when
    absent: minutes on a CPU)."""
    clf, _ = reference_classifier(cfg.dataset, ds=ds)
    clf = clf.to(device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf.features


# ---------------------------------------------------------------- what both trainers share (train and multirun)


def epoch_row(
    epoch: int,
    step: int,
    beta: float,
    lr: float,
    train_terms: list[float],
    val: dict,
    seconds: float,
    seen: float,
    skipped: int,
    skipped_large: int,
    **extra,
) -> dict:
    """One line of a run's history (metrics.jsonl), the same schema from either trainer."""
    return {
        "epoch": epoch,
        "step": step,
        "beta": beta,
        "lr": lr,
        "train_loss": train_terms[0],
        "train_recon": train_terms[1],
        "train_kl": train_terms[2],
        **{f"val_{k}": v for k, v in val.items()},
        "seconds": seconds,
        "images_per_s": seen / seconds if seconds > 0 else 0.0,
        "skipped_steps": skipped,
        "skipped_large_grad": skipped_large,
        **extra,
    }


def checkpoint_record(
    cfg: TrainConfig,
    epoch: int,
    step: int,
    bad_steps: int,
    bad_in_row: int,
    model: dict,
    optimizer: dict,
    rng: dict,
    history: list[dict],
    ds: vdata.Dataset,
    **extra,
) -> dict:
    """A checkpoint's contents, the same layout from either trainer (`extra`: raw, EMA and critic weights)."""
    return {
        "config": cfg.to_dict(),
        "epoch": epoch,
        "step": step,
        "bad_steps": bad_steps,
        "bad_in_row": bad_in_row,
        "model": model,
        "optimizer": optimizer,
        **extra,
        "rng": rng,
        "history": history,
        "shape": list(ds.shape),
        "classes": list(ds.classes),
        "versions": {"vaelab": __version__, "torch": torch.__version__},
    }


def check_epoch(
    cfg: TrainConfig,
    epoch: int,
    steps: int,
    seen: float,
    bad: int,
    skipped_large: int,
    params,
    ckpt_path: Path,
    run: Path | None = None,
) -> None:
    """An epoch that went bad never overwrites the last good checkpoint: every step skipped for its gradient norm,
    too many non-finite steps, or weights that are no longer finite."""
    if steps and seen == 0 and skipped_large:  # no update at all: the model would never train
        raise diverged(
            epoch,
            f"all {skipped_large} steps had a gradient norm above skip_grad_norm "
            f"{cfg.skip_grad_norm:g} and were skipped (raise it, or 0 = off)",
            ckpt_path,
            run,
        )
    if bad and (bad > cfg.max_skip_share * steps or seen == 0):
        raise diverged(
            epoch,
            f"{bad} of {steps} steps were non-finite and skipped (more than max_skip_share {cfg.max_skip_share:g})",
            ckpt_path,
            run,
        )
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise diverged(epoch, "the weights are no longer finite", ckpt_path, run)


def check_val(val: dict, epoch: int, ckpt_path: Path, run: Path | None = None) -> None:
    if not all(math.isfinite(v) for v in val.values()):
        raise diverged(epoch, "the validation ELBO is not finite", ckpt_path, run)


def diverged(epoch: int, why: str, ckpt_path: Path, run: Path | None = None) -> TrainingDiverged:
    """The one exception of a run that went bad; `run` names it when several train together."""
    kept = f"the last good checkpoint is kept in {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written"
    where = f"{run}: " if run is not None else ""
    return TrainingDiverged(
        f"{where}training diverged in epoch {epoch}: {why}; {kept} (try a lower --lr or --grad-clip)"
    )


def ema_decay(decay: float, step: int) -> float:
    """The EMA's decay at `step`, warmed up as TensorFlow's ExponentialMovingAverage does with num_updates:
    min(decay, (1 + step) / (10 + step)). Without it, 0.999 keeps 3 % of the initial weights after 3,500 steps,
    and a Fashion-MNIST model's validation ELBO was 132 nats worse than its raw weights' (docs/benchmarks.md#ema-snapshots)."""
    return min(decay, (1 + step) / (10 + step))


def _improves(value: float, best: float, min_improvement: float) -> bool:
    """A validation negative ELBO better than the best by more than the relative margin."""
    if not math.isfinite(best):  # nothing yet to beat
        return math.isfinite(value)
    return value < best - min_improvement * abs(best)


def _best(history: list[dict], min_improvement: float) -> tuple[float, int]:
    """The best validation negative ELBO in a run's history by the same rule, and its epoch (inf, 0 if none)."""
    best, epoch = math.inf, 0
    for r in history:
        if "val_neg_elbo" in r and _improves(r["val_neg_elbo"], best, min_improvement):
            best, epoch = r["val_neg_elbo"], r["epoch"]
    return best, epoch


class StepCore:
    """What every trainer does around its optimiser steps, in one place that train's loop and multirun's stacked one
    both drive: the non-finite guard (a skipped step; max_bad_steps of them in a row diverge), the learning rate at
    a moment of training, and an epoch's end — its tallies and validation checked, its history row, checkpoint and
    metrics written."""

    def __init__(self, *, cfg: TrainConfig, out: Path, history: list[dict], bad_in_row: int = 0, write: bool = True):
        self.cfg, self.out, self.history, self.bad_in_row, self.write = cfg, out, history, bad_in_row, write
        self.ckpt_path = Run(out, check=False).checkpoint_path

    def lr_at(self, progress: float) -> float:
        """The learning rate at `progress` in [0, 1] of training (optim.lr_factor's schedule)."""
        return self.cfg.lr * lr_factor(self.cfg, progress)

    def guard(self, *, ok: bool, epoch: int, run: Path | None = None) -> bool:
        """A finite step resets the count of non-finite ones in a row; a non-finite one is skipped (False), and
        max_bad_steps of them in a row end the run as diverged. `epoch` counts from 0."""
        if ok:
            self.bad_in_row = 0
            return True
        self.bad_in_row += 1
        if self.bad_in_row >= self.cfg.max_bad_steps:
            raise diverged(epoch + 1, f"{self.bad_in_row} non-finite steps in a row", self.ckpt_path, run)
        return False

    def close_epoch(
        self, *, epoch: int, step: int, beta: float, lr: float, sums, seen: int, steps: int, bad: int,
        skipped_large: int, seconds: float, params, validate, run: Path | None = None, **extra,
    ) -> tuple[dict, dict]:  # fmt: skip
        """The epoch's tallies checked, its validation terms (validate()) checked, and its history row; returns
        (row, validation terms). `epoch` counts from 1."""
        check_epoch(self.cfg, epoch, steps, seen, bad, skipped_large, params, self.ckpt_path, run)
        val = validate()
        check_val(val, epoch, self.ckpt_path, run)
        row = epoch_row(
            epoch, step, beta, lr, (sums / max(seen, 1)).tolist(), val, seconds, seen, bad, skipped_large, **extra
        )
        return row, val

    def commit(self, row: dict, record) -> None:
        """The row into the history, then (where this process writes) the checkpoint record() and metrics.jsonl."""
        self.history.append(row)
        if self.write:
            save_checkpoint(self.out, record())
            write_metrics(self.out, self.history)

"""One explicit training loop: seeded, resumable, NaN-guarded, writing a self-describing run directory."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from . import data as vdata
from . import distributed
from .checkpoint import (  # noqa: F401
    CHECKPOINT_FORMAT,
    available_bytes,
    check_fits,
    convert_legacy,
    legacy_message,
    load_checkpoint,
    load_model,
    model_bytes,
    resolve_device,
    save_checkpoint,
    save_snapshot,
)
from .classifier import reference_classifier
from .config import TrainConfig, config_diff, from_dict, parse_budget, snapshot_fractions
from .errors import VaelabError
from .losses import TCCritic, draws, objective, objective_entry, perceptual_term, scheduled_beta
from .models import VAE, noise
from .models import build as build_model
from .optim import fused_optimizer, lr_factor, make_optimizer  # noqa: F401
from .run import Run
from .store import (
    FolderLock,
    atomic_write_json,
    atomic_write_text,
    check_can_create,
    ensure_writable_dir,
    remove_stale_temps,
)
from .tracking import Tracker
from .version import __version__


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


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    resume: bool = False,
    dataset: vdata.Dataset | None = None,
    progress: bool | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train `cfg` into `out_dir`; with resume=True continue from its checkpoint. Returns the last epoch's metrics.

    Everything that can fail on bad input (device, data, splits, memory, a mismatching run) is checked before
    anything is written, so a failed start leaves no debris that blocks the corrected re-run."""
    out = Path(out_dir)
    device, ds, splits = check_start(cfg, out, data_dir, resume, dataset)
    d = distributed.current()
    distributed.barrier(d)  # every process has checked the directory before the first one writes to it
    if not d.main:  # rank 0 writes (and locks) the run directory; the others only train
        return _train_locked(cfg, out, ds, device, splits["train"], splits["val"], progress, on_epoch_end)
    ensure_writable_dir(out)
    with FolderLock(out, "this run directory"):
        return _train_locked(cfg, out, ds, device, splits["train"], splits["val"], progress, on_epoch_end)


def check_start(cfg: TrainConfig, out: Path, data_dir=None, resume: bool = False, dataset=None) -> tuple:
    """What can fail on bad input before training writes anything: the directory, device, data, splits and memory.
    Returns (device, dataset, splits)."""
    if Run(out, check=False).holds_run() and not resume:
        raise VaelabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    check_can_create(out)
    device = resolve_device(cfg.device)
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


def _train_locked(cfg, out, ds, device, train_split, val_split, progress, on_epoch_end) -> dict:
    ckpt = _stored_checkpoint(cfg, out)
    main = distributed.current().main
    if main:  # the one writer (the other processes must not remove its files in flight)
        remove_stale_temps(out)
        atomic_write_json(Run(out, check=False).config_path, cfg.to_dict())
    if ckpt is not None and main:
        # A kill between the checkpoint's rename and the metrics' leaves metrics.jsonl an epoch behind;
        # the checkpoint's history is the truth.
        write_metrics(out, ckpt["history"])
        if ckpt["epoch"] >= cfg.epochs:
            return ckpt["history"][-1]
    trainer = _Trainer(cfg, out, ds, device, train_split, val_split, ckpt)
    if trainer.finished():
        return trainer.history[-1]
    return trainer.run(sys.stderr.isatty() if progress is None else progress, on_epoch_end)


@dataclass
class _Epoch:
    """One epoch's tallies: loss/recon/KL sums, images trained on, steps, skipped steps, whether time ran out."""

    sums: torch.Tensor
    t0: float
    seen: int = 0
    steps: int = 0
    bad: int = 0
    skipped_large: int = 0
    out_of_time: bool = False


class _Trainer:
    """One run's training: its model, optimiser, EMA, critic and generators, restored from a checkpoint or made from
    the seed, stepped over epochs, validated and checkpointed after each."""

    def __init__(self, cfg: TrainConfig, out: Path, ds, device, train_split, val_split, ckpt: dict | None):
        self.cfg, self.out, self.ds, self.device = cfg, out, ds, device
        self.train_split, self.val_split, self.n = train_split, val_split, len(train_split)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, ds.shape, len(ds.classes)).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer(cfg, self.model)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        self.total_steps = max(cfg.epochs * self.steps_per_epoch, 1)
        # An exponential moving average of the weights (VDVAE): what validation, the checkpoint's "model" and so
        # every evaluation and sample use; the raw weights go to "train_model" so that training resumes from them.
        self.ema = None
        if cfg.ema:
            with torch.random.fork_rng(devices=[]):  # its throwaway initialisation must not move the random stream
                self.ema = build_model(cfg, ds.shape, len(ds.classes)).to(device).requires_grad_(False)
        # FactorVAE's critic: its own weights and optimizer (Kim & Mnih 2018: Adam 1e-4, betas 0.5, 0.9), made after
        # the model so the model's initial weights do not depend on the objective
        self.critic = TCCritic(cfg.latent_dim).to(device) if objective_entry(cfg.objective).needs_critic else None
        self.critic_opt = (
            torch.optim.Adam(self.critic.parameters(), lr=1e-4, betas=(0.5, 0.9)) if self.critic is not None else None
        )
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        self.binarize = vdata.binarized(cfg.dataset)  # dynamic binarization draws from the batch generator
        self.dist = distributed.current()
        # The critic's permutations draw from the batch generator in one process; on several, from one of each
        # process's own (its shard's size must not move the batch order, which every process draws alike)
        self.critic_gen = (
            self.gen
            if not self.dist.on
            else torch.Generator(device=device).manual_seed(cfg.seed + 7919 * self.dist.rank)
        )
        self.history, self.start_epoch, self.step, self.total_bad, self.bad_in_row = [], 0, 0, 0, 0
        self._restore(ckpt)
        self.evaluated = self.ema if self.ema is not None else self.model  # what validation (and patience) reads
        # Early stopping (patience): the best epoch's evaluated weights are kept as the checkpoint's "model".
        self.best_state = ckpt["model"] if (ckpt is not None and cfg.patience) else None
        self.best_val, self.best_epoch = _best(self.history, cfg.min_improvement)
        self.trained_s = sum(r["seconds"] for r in self.history)  # training seconds so far: what a budget counts
        self.budget_steps = budget_steps(cfg, self.model, train_split)  # a count budget, as optimiser steps
        if self.budget_steps:
            self.total_steps = self.budget_steps  # the schedules span the budget
        # the steps are known now, a FLOP budget's too (check_start could check every other budget before writing)
        check_snapshot_steps(cfg, None if cfg.time_budget else self.total_steps)
        # snapshots still to keep; one a killed run already wrote is the same weights when the steps are redone
        # (and one whose moment a restored run has passed cannot be made again: it stays missing, never later weights)
        run, done = Run(out, check=False), _progress(cfg, self.step, self.total_steps, self.trained_s)
        self.snapshots_due = [
            f for f in snapshot_fractions(cfg.snapshots) if f > done and not run.snapshot_path(f).exists()
        ]

    def _restore(self, ckpt: dict | None) -> None:
        """A checkpoint's state ("model" is what evaluation reads: the EMA, or the best epoch with patience)."""
        if ckpt is not None:
            self.model.load_state_dict(ckpt["train_model"] if "train_model" in ckpt else ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            _set_rng_state(ckpt["rng"], self.gen)
            self.history, self.start_epoch = ckpt["history"], ckpt["epoch"]
            self.step, self.total_bad = ckpt["step"], ckpt["bad_steps"]
            self.bad_in_row = ckpt.get("bad_in_row", 0)
            if self.critic is not None:
                self.critic.load_state_dict(ckpt["critic"])
                self.critic_opt.load_state_dict(ckpt["critic_optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(
                ckpt.get("ema_model", ckpt["model"]) if ckpt is not None else self.model.state_dict()
            )

    def finished(self) -> bool:
        """The time budget is spent, or patience already stopped the run."""
        spent = self.cfg.time_budget and self.trained_s >= self.cfg.time_budget
        counted = self.budget_steps and self.step >= self.budget_steps
        return bool(spent or counted or (self.history and self.history[-1].get("stopped_early")))

    def run(self, show: bool, on_epoch_end) -> dict:
        cfg = self.cfg
        self.features = _perceptual_features(cfg, self.ds, self.device) if cfg.perceptual_weight > 0 else None
        self.tracker = Tracker(self.out, cfg) if cfg.tracker and self.dist.main else None  # closed however it ends
        try:
            self.forward = distributed.wrap(self.model, self.dist, self.device)  # DDP on several processes
            self.forward = torch.compile(self.forward) if cfg.compile else self.forward
            # bf16 autocast on CUDA and on CPUs (avx512_bf16/AMX make it pay); the loss terms stay fp32
            self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
            self.clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            self.skip_above = cfg.skip_grad_norm if cfg.skip_grad_norm > 0 else math.inf
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            self.pairs = (list(self.ema.parameters()), list(self.model.parameters())) if self.ema is not None else None
            show = show and self.dist.main  # one progress bar, rank 0's
            for epoch in range(self.start_epoch, cfg.epochs):
                ep = self._epoch(epoch, show)
                row = self._end_epoch(epoch + 1, ep)
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, row)
                if ep.out_of_time or row.get("stopped_early"):
                    break
            return self.history[-1]
        finally:
            if self.tracker is not None:
                self.tracker.close(self.history[-1] if self.history else None)

    def _out_of_time(self, ep: _Epoch) -> bool:
        """The budget is spent: its steps (images, FLOPs) taken, or its seconds trained."""
        if self.budget_steps:
            return self.step >= self.budget_steps
        return bool(self.cfg.time_budget) and self._clock(ep) >= self.cfg.time_budget

    def _clock(self, ep: _Epoch) -> float:
        """Training seconds so far; on several processes rank 0's, so that a time budget stops them together."""
        now = time.perf_counter() - ep.t0
        if self.dist.on and self.cfg.time_budget:
            now = distributed.from_main(now, self.dist, self.device)
        return self.trained_s + now

    def _epoch(self, epoch: int, show: bool) -> _Epoch:
        self.model.train()
        ep = _Epoch(torch.zeros(3, device=self.device, dtype=torch.float64), time.perf_counter())
        bar = tqdm(total=self.n, unit="img", desc=f"epoch {epoch + 1}/{self.cfg.epochs}", disable=not show, leave=False)
        for i, idx in enumerate(vdata.minibatches(self.n, self.cfg.batch_size, self.gen, self.device)):
            if self._step(idx, ep, epoch):
                self._keep_snapshots(ep, epoch)
                bar.update(len(idx))
                if show and i % 20 == 0:
                    s = (ep.sums / max(ep.seen, 1)).tolist()
                    bar.set_postfix(
                        loss=f"{s[0]:.1f}",
                        recon=f"{s[1]:.1f}",
                        kl=f"{s[2]:.2f}",
                        img_s=f"{ep.seen / (time.perf_counter() - ep.t0):.0f}",
                    )
            if self._out_of_time(ep):
                ep.out_of_time = True  # stop cleanly: this partial epoch is checkpointed and the run is done
                break
        bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return ep

    def _keep_snapshots(self, ep: _Epoch, epoch: int) -> None:
        """Keep the evaluated weights (the EMA's with --ema) once training passes each snapshot's fraction, measured
        as the learning-rate schedule measures it (steps of a count budget, seconds of a time budget)."""
        if not self.snapshots_due:
            return
        done = _progress(self.cfg, self.step, self.total_steps, self._clock(ep))
        while self.snapshots_due and done >= self.snapshots_due[0]:
            fraction = self.snapshots_due.pop(0)
            self._sync_ema_buffers()
            if not self.dist.main:
                continue
            record = {
                "config": self.cfg.to_dict(),
                "epoch": epoch,
                "step": self.step,
                "fraction": fraction,
                "model": self.evaluated.state_dict(),
                "shape": list(self.ds.shape),
                "classes": list(self.ds.classes),
            }
            save_snapshot(Run(self.out, check=False).snapshot_path(fraction), record)

    def _sync_ema_buffers(self) -> None:
        if self.ema is not None:  # buffers (none in vaelab's nets today) follow the raw model
            for b_ema, b in zip(self.ema.buffers(), self.model.buffers()):
                b_ema.copy_(b)

    def _loss(self, idx: torch.Tensor, done: float, beta_t: float):
        """The objective's mean over this process's images of the batch `idx` (all of them in one process)."""
        cfg = self.cfg
        shard = distributed.shard(len(idx), self.dist) if self.dist.on else (0, len(idx))
        x = self.train_split.x[idx[shard[0] : shard[1]]]
        if self.binarize:  # a fresh draw of the whole batch (the same count on every process), then this shard's
            x = vdata.binarize(self.train_split.x[idx], self.gen)[shard[0] : shard[1]]
        y = self.train_split.y[idx[shard[0] : shard[1]]] if cfg.conditional else None
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast, noise.batch_shard(len(idx), *shard) if self.dist.on else contextlib.nullcontext():
            terms = self.forward(x, y, **draws(cfg))
        if self.critic is not None:
            terms["tc"] = self.critic(terms["z"].float())
        if self.features is not None:
            terms["perceptual"] = perceptual_term(self.features, x, self.model.x_hat(terms["params"]))
        return objective(terms, beta_t, cfg, done, n_data=self.n), terms

    def _step(self, idx: torch.Tensor, ep: _Epoch, epoch: int) -> bool:
        """One optimiser step; False when the step was skipped (non-finite, or a gradient above skip_grad_norm)."""
        cfg = self.cfg
        # one measure of how far training is, for the KL schedule, the objective and the learning rate
        done = _progress(cfg, self.step, self.total_steps, self._clock(ep))
        beta_t = scheduled_beta(cfg, self.step, self.steps_per_epoch, done)
        loss, terms = self._loss(idx, done, beta_t)
        b = len(terms["recon"])  # this process's images of the batch
        self.opt.zero_grad(set_to_none=True)
        # on several processes each mean is weighted by its share of the batch, so that the gradients DDP averages
        # are the gradient of the whole batch's mean
        (loss * (b * self.dist.world / len(idx)) if self.dist.on else loss).backward()
        grad_norm = _grad_norm(self.params)
        ep.steps += 1
        # One host sync per step: a non-finite loss or gradient skips the update (in every process alike).
        ok = bool(torch.isfinite(distributed.total(loss.detach(), self.dist)) & torch.isfinite(grad_norm))
        if ok and self.clip < math.inf:
            _clip(self.params, self.clip, grad_norm)
        if not ok:  # NaN/inf guard (as in vdvae): skip the update; the run in a row counts across epochs
            self.bad_in_row += 1
            ep.bad += 1
            if self.bad_in_row >= cfg.max_bad_steps:
                raise diverged(
                    epoch + 1,
                    f"{self.bad_in_row} non-finite steps in a row",
                    Run(self.out, check=False).checkpoint_path,
                )
            return False
        self.bad_in_row = 0
        if float(grad_norm) > self.skip_above:  # a rare huge gradient (VDVAE's skip_threshold): no update
            ep.skipped_large += 1
            return False
        self._update(done, terms)
        if self.tracker is not None:
            self.tracker.step(self.step, loss.detach(), terms, beta_t, self.opt.param_groups[0]["lr"])
        ep.seen += b
        ep.sums += torch.stack([loss.detach() * b, terms["recon"].detach().sum(), terms["kl"].detach().sum()]).double()
        return True

    def _update(self, done: float, terms: dict) -> None:
        """The optimiser step at the scheduled learning rate, then the critic's step and the EMA's."""
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(self.cfg, done)
        self.opt.step()
        if self.critic is not None:  # then the critic learns on this batch's codes (the model's are detached)
            critic_loss = self.critic.loss(terms["z"].detach().float(), self.critic_gen)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            distributed.average_grads(self.critic.parameters(), self.dist)
            self.critic_opt.step()
        if self.ema is not None:  # ema += (1 - decay) * (w - ema), one fused pass
            torch._foreach_lerp_(*self.pairs, 1.0 - ema_decay(self.cfg.ema, self.step))
        self.step += 1

    def _end_epoch(self, epoch: int, ep: _Epoch) -> dict:
        """Check the epoch, validate, write its history row and checkpoint; returns the row."""
        cfg, ckpt_path = self.cfg, Run(self.out, check=False).checkpoint_path
        seconds = distributed.from_main(time.perf_counter() - ep.t0, self.dist, self.device)
        if self.dist.on:  # the epoch's tallies over every process's shards
            ep.sums = distributed.total(ep.sums, self.dist)
            ep.seen = int(distributed.total(torch.tensor(ep.seen, device=self.device), self.dist))
        check_epoch(cfg, epoch, ep.steps, ep.seen, ep.bad, ep.skipped_large, self.params, ckpt_path)
        self.trained_s += seconds
        self._sync_ema_buffers()
        val = average_terms(self.evaluated, self.val_split) if len(self.val_split) else {}
        check_val(val, epoch, ckpt_path)
        self.total_bad += ep.bad
        beta = scheduled_beta(
            cfg, self.step, self.steps_per_epoch, _progress(cfg, self.step, self.total_steps, self.trained_s)
        )
        row = epoch_row(
            epoch,
            self.step,
            beta,
            self.opt.param_groups[0]["lr"],
            (ep.sums / max(ep.seen, 1)).tolist(),
            val,
            seconds,
            ep.seen,
            ep.bad,
            ep.skipped_large,
            **({"partial": True} if ep.out_of_time and ep.seen < self.n else {}),
        )
        if cfg.patience:
            self._patience(row, val, epoch)
        self.history.append(row)
        if self.dist.main:
            save_checkpoint(self.out, self._record(epoch))
            write_metrics(self.out, self.history)
        if self.tracker is not None:
            self.tracker.epoch(row, self.evaluated, self.val_split.x, self.val_split.y)
        return row

    def _patience(self, row: dict, val: dict, epoch: int) -> None:
        if _improves(val["neg_elbo"], self.best_val, self.cfg.min_improvement):
            self.best_val, self.best_epoch = val["neg_elbo"], epoch
            self.best_state = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}
        row["best_epoch"] = self.best_epoch
        if epoch - self.best_epoch >= self.cfg.patience:
            row["stopped_early"] = True  # converged by the patience rule: the best epoch is the model

    def _record(self, epoch: int) -> dict:
        best, ema, critic = self.best_state, self.ema, self.critic
        extra = {
            **(
                {"train_model": self.model.state_dict()} if self.evaluated is not self.model or best is not None else {}
            ),
            **({"ema_model": ema.state_dict()} if ema is not None and best is not None else {}),
            **(
                {"critic": critic.state_dict(), "critic_optimizer": self.critic_opt.state_dict()}
                if critic is not None
                else {}
            ),
        }
        return checkpoint_record(
            self.cfg,
            epoch,
            self.step,
            self.total_bad,
            self.bad_in_row,
            best if best is not None else self.evaluated.state_dict(),
            self.opt.state_dict(),
            _rng_state(self.gen),
            self.history,
            self.ds,
            **extra,
        )


def ema_decay(decay: float, step: int) -> float:
    """The EMA's decay at `step`, warmed up as TensorFlow's ExponentialMovingAverage does with num_updates:
    min(decay, (1 + step) / (10 + step)). Without it, 0.999 keeps 3 % of the initial weights after 3,500 steps,
    and a Fashion-MNIST model's validation ELBO was 132 nats worse than its raw weights' (docs/benchmarks.md#ema-snapshots)."""
    return min(decay, (1 + step) / (10 + step))


def _progress(cfg: TrainConfig, step: int, total_steps: int, trained_seconds: float) -> float:
    """The share of training done: of the time budget's seconds when there is one, else of the steps."""
    return trained_seconds / cfg.time_budget if cfg.time_budget else step / total_steps


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

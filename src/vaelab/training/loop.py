"""One explicit training loop: seeded, resumable, NaN-guarded, writing a self-describing run directory."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vaelab import data as vdata
from vaelab.core.store import (
    FolderLock,
    atomic_write_json,
    ensure_writable_dir,
    remove_stale_temps,
)
from vaelab.models import build as build_model
from vaelab.models import noise
from vaelab.models.losses import TCCritic, draws, objective, objective_entry, perceptual_term, scheduled_beta
from vaelab.runs.checkpoint import (
    save_snapshot,
)
from vaelab.runs.config import TrainConfig, snapshot_fractions
from vaelab.runs.run import Run
from vaelab.training import distributed
from vaelab.training.budget import _stored_checkpoint, budget_steps, check_snapshot_steps, check_start
from vaelab.training.epochs import (
    StepCore,
    _best,
    _clip,
    _grad_norm,
    _improves,
    _perceptual_features,
    _rng_state,
    _set_rng_state,
    average_terms,
    checkpoint_record,
    diverged,
    ema_decay,
    write_metrics,
)
from vaelab.training.guard import DeviceGuard, read_every
from vaelab.training.optim import make_optimizer
from vaelab.training.tracking import Tracker


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
        self.core = StepCore(cfg=cfg, out=out, history=self.history, bad_in_row=self.bad_in_row, write=self.dist.main)
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
            self.guard = self._device_guard()
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
            if self.step >= self.budget_steps and self.guard is not None:
                self._settle(ep, len(self.history))  # count the skipped steps first: a budget counts updates
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
        if self.guard is not None and done >= self.snapshots_due[0]:  # the moment counts updates: read the guard
            self._settle(ep, epoch)
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
        if self.guard is not None:  # the guard on the device: no host read in this step
            return self._step_on_device(loss, terms, grad_norm, b, ep, done, epoch)
        # One host sync per step: a non-finite loss or gradient skips the update (in every process alike).
        ok = bool(torch.isfinite(distributed.total(loss.detach(), self.dist)) & torch.isfinite(grad_norm))
        if ok and self.clip < math.inf:
            _clip(self.params, self.clip, grad_norm)
        if not self.core.guard(ok=ok, epoch=epoch):  # NaN/inf guard (as in vdvae): skip; a run of them diverges
            ep.bad += 1
            return False
        # a rare huge gradient (VDVAE's skip_threshold): no update; read only when the threshold is on (a host sync)
        if self.skip_above < math.inf and float(grad_norm) > self.skip_above:
            ep.skipped_large += 1
            return False
        self._update(done, terms)
        if self.tracker is not None:
            self.tracker.step(self.step, loss.detach(), terms, beta_t, self.opt.param_groups[0]["lr"])
        ep.seen += b
        ep.sums += _sums(loss, terms, b).double()
        return True

    def _device_guard(self) -> DeviceGuard | None:
        """The guard on the device where the host reads it less often than every step (guard.HOST_READ_EVERY) and
        the step allows it: a fused optimiser (it skips an update on the device), no critic, no per-step tracker."""
        every = read_every(self.device)
        fused = getattr(self.opt, "_step_supports_amp_scaling", False)
        if every <= 1 or not fused or self.critic is not None or self.tracker is not None:
            return None
        return DeviceGuard(self.device, self.core.bad_in_row, every)

    def _step_on_device(self, loss, terms, grad_norm, b: int, ep: _Epoch, done: float, epoch: int) -> bool:
        """The step with the guard on the device: a skipped step is an update the fused optimiser does not apply
        (found_inf) and an EMA step of weight 0; the host counts it when it next reads the guard (_settle)."""
        finite = torch.isfinite(distributed.total(loss.detach(), self.dist)) & torch.isfinite(grad_norm)
        apply = self.guard.step(finite, finite & (grad_norm > self.skip_above), b)
        if self.clip < math.inf:  # scales by min(1, clip / norm): no host read; a skipped step's NaN is never applied
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.found_inf = (~apply).float()
        self._update(done, terms, apply)
        ep.sums += torch.where(apply, _sums(loss, terms, b), 0.0).double()
        if self.guard.due():
            self._settle(ep, epoch)
        return True

    def _settle(self, ep: _Epoch, epoch: int) -> None:
        """Read the device's guard: its skipped steps leave the step count (as if counted each step), its tallies
        join the epoch's, and a run of max_bad_steps non-finite steps in a row ends the run as diverged (`epoch`
        counts from 0)."""
        if self.guard is None or self.guard.since == 0:
            return
        s = self.guard.read()
        self.step -= s.bad + s.large
        ep.bad, ep.skipped_large, ep.seen = ep.bad + s.bad, ep.skipped_large + s.large, ep.seen + s.seen
        self.core.bad_in_row = s.in_row
        if s.worst >= self.cfg.max_bad_steps:
            why = f"{self.cfg.max_bad_steps} non-finite steps in a row"
            raise diverged(epoch + 1, why, self.core.ckpt_path, None)

    def _update(self, done: float, terms: dict, apply: torch.Tensor | None = None) -> None:
        """The optimiser step at the scheduled learning rate, then the critic's step and the EMA's (with `apply`,
        the device guard's verdict, an EMA step of weight 0 when the update was skipped)."""
        for group in self.opt.param_groups:
            group["lr"] = self.core.lr_at(done)
        self.opt.step()
        if self.critic is not None:  # then the critic learns on this batch's codes (the model's are detached)
            critic_loss = self.critic.loss(terms["z"].detach().float(), self.critic_gen)
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            distributed.average_grads(self.critic.parameters(), self.dist)
            self.critic_opt.step()
        if self.ema is not None and apply is not None:  # ema += apply * (1 - decay) * (w - ema), on the device
            diff = torch._foreach_sub(self.pairs[1], self.pairs[0])
            torch._foreach_mul_(diff, apply * (1.0 - ema_decay(self.cfg.ema, self.step)))
            torch._foreach_add_(self.pairs[0], diff)
        elif self.ema is not None:  # ema += (1 - decay) * (w - ema), one fused pass
            torch._foreach_lerp_(*self.pairs, 1.0 - ema_decay(self.cfg.ema, self.step))
        self.step += 1

    def _end_epoch(self, epoch: int, ep: _Epoch) -> dict:
        """Check the epoch, validate, write its history row and checkpoint (StepCore); returns the row."""
        cfg = self.cfg
        self._settle(ep, epoch - 1)  # the device guard's last steps, before the epoch is checked
        seconds = distributed.from_main(time.perf_counter() - ep.t0, self.dist, self.device)
        if self.dist.on:  # the epoch's tallies over every process's shards
            ep.sums = distributed.total(ep.sums, self.dist)
            ep.seen = int(distributed.total(torch.tensor(ep.seen, device=self.device), self.dist))
        self.trained_s += seconds
        self._sync_ema_buffers()
        self.total_bad += ep.bad
        done = _progress(cfg, self.step, self.total_steps, self.trained_s)
        row, val = self.core.close_epoch(
            epoch=epoch,
            step=self.step,
            beta=scheduled_beta(cfg, self.step, self.steps_per_epoch, done),
            lr=self.opt.param_groups[0]["lr"],
            sums=ep.sums,
            seen=ep.seen,
            steps=ep.steps,
            bad=ep.bad,
            skipped_large=ep.skipped_large,
            seconds=seconds,
            params=self.params,
            validate=lambda: average_terms(self.evaluated, self.val_split) if len(self.val_split) else {},
            **({"partial": True} if ep.out_of_time and ep.seen < self.n else {}),
        )
        if cfg.patience:
            self._patience(row, val, epoch)
        self.core.commit(row, lambda: self._record(epoch))
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
            self.core.bad_in_row,
            best if best is not None else self.evaluated.state_dict(),
            self.opt.state_dict(),
            _rng_state(self.gen),
            self.history,
            self.ds,
            **extra,
        )


def _sums(loss: torch.Tensor, terms: dict, b: int) -> torch.Tensor:
    """A step's contribution to the epoch's sums of loss, reconstruction and KL over its b images."""
    return torch.stack([loss.detach() * b, terms["recon"].detach().sum(), terms["kl"].detach().sum()])


def _progress(cfg: TrainConfig, step: int, total_steps: int, trained_seconds: float) -> float:
    """The share of training done: of the time budget's seconds when there is one, else of the steps."""
    return trained_seconds / cfg.time_budget if cfg.time_budget else step / total_steps

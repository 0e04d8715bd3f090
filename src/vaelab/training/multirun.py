"""Several runs of one architecture trained as one (stacked weights, torch.func.vmap): many small cells per device.

A study's cells are small models that leave a GPU idle. Runs that differ only in `seed` and `beta` share every
shape, so their weights stack into one batch of models and one vmapped step trains them all. Each run keeps what
`train` gives it: its initial weights (from its seed), its data order and posterior noise (its own generators, in
the order `train` draws them), its KL weight, its Adam state, gradient clipping and NaN guard. Each run's directory
gets the checkpoint, metrics and config `train` would write, so evaluation, reports and `vaelab train --resume`
treat it as any other run (an interrupted group resumes run by run, exactly). tests/test_multirun.py checks the
numbers against training the runs one by one.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value, stack_module_state, vmap
from torch.optim.adam import adam  # torch.optim's functional Adam: the update torch.optim.Adam makes

from vaelab import data as vdata
from vaelab.core.device import resolve_device
from vaelab.core.errors import VaelabError
from vaelab.core.store import FolderLock, atomic_write_json, check_can_create, ensure_writable_dir
from vaelab.models import build as build_model
from vaelab.models.losses import objective, objective_entry, scheduled_beta
from vaelab.runs.config import TrainConfig
from vaelab.runs.run import Run
from vaelab.training.epochs import StepCore, average_terms, checkpoint_record
from vaelab.training.optim import make_optimizer

VARY = ("seed", "beta")  # what may differ between the runs of a group; every other field is shared


def unsupported(cfg: TrainConfig) -> str | None:
    """Why a config cannot train in a group (None if it can): the stacked step covers the flat VAE with a Gaussian
    posterior, the standard prior and the beta-ELBO, for a fixed number of epochs."""
    checks = [
        (cfg.model == "vae", f"model {cfg.model}"),
        (cfg.posterior == "gaussian" and cfg.prior == "standard", "a flow posterior or a learned prior"),
        (objective_entry(cfg.objective).stackable and cfg.free_bits == 0, f"objective {cfg.objective}"),
        (not cfg.conditional and cfg.perceptual_weight == 0, "a conditional model or the perceptual term"),
        (
            not (cfg.ema or cfg.patience or cfg.time_budget or cfg.budget or cfg.snapshots),
            "ema, patience, a budget or snapshots",
        ),
        (not cfg.compile and not cfg.channels_last, "compile or channels_last"),
        (cfg.optimizer == "adam", f"optimizer {cfg.optimizer}"),
        (cfg.skip_grad_norm == 0 and cfg.weight_decay == 0, "skip_grad_norm or weight_decay"),
        (not vdata.binarized(cfg.dataset), f"the dynamically binarized {cfg.dataset}"),
    ]
    bad = [why for ok, why in checks if not ok]
    return ", ".join(bad) if bad else None


def group_key(cfg: TrainConfig) -> tuple:
    """Configs with equal keys can train together."""
    return tuple(sorted((k, v) for k, v in cfg.to_dict().items() if k not in VARY))


def groups(cfgs: list[TrainConfig]) -> list[list[int]]:
    """Indices of the configs that can train together (groups of two or more), in first-seen order."""
    by_key: dict[tuple, list[int]] = {}
    for i, c in enumerate(cfgs):
        if unsupported(c) is None:
            by_key.setdefault(group_key(c), []).append(i)
    return [g for g in by_key.values() if len(g) > 1]


class _Run:
    """One run's own state besides its weights: generators, step count, history, its module for validation."""

    def __init__(self, cfg: TrainConfig, out: Path, model: torch.nn.Module, device: torch.device):
        self.cfg, self.out, self.model = cfg, out, model
        self.batches = torch.Generator(device=device).manual_seed(cfg.seed)  # train's data order
        # train draws the posterior's noise from torch's global generator, seeded before the model is built
        self.cpu_state = torch.get_rng_state()
        self.noise = torch.Generator(device=device)
        self.noise.set_state(
            self.cpu_state if device.type == "cpu" else torch.Generator(device=device).manual_seed(cfg.seed).get_state()
        )
        self.step, self.history = 0, []
        self.core = StepCore(cfg=cfg, out=out, history=self.history)  # train's guard, schedule and epoch end

    def with_global_noise(self, fn):
        """Run fn with this run's noise generator as torch's global one (validation draws from the global)."""
        dev = self.noise.device
        get, put = (
            (torch.get_rng_state, torch.set_rng_state)
            if dev.type == "cpu"
            else (lambda: torch.cuda.get_rng_state(dev), lambda s: torch.cuda.set_rng_state(s, dev))
        )
        saved = get()
        put(self.noise.get_state())
        try:
            return fn()
        finally:
            self.noise.set_state(get())
            put(saved)

    def rng(self) -> dict:
        """The checkpoint's RNG record, as train writes it, so that `vaelab train --resume` continues exactly."""
        on_cpu = self.noise.device.type == "cpu"
        return {
            "torch": self.noise.get_state() if on_cpu else self.cpu_state,
            "batches": self.batches.get_state(),
            "cuda": None if on_cpu else [self.noise.get_state()],
        }


class _Stack:
    """The runs' weights stacked along a leading run dimension, with their Adam moments and step counts."""

    def __init__(self, models: list[torch.nn.Module], device: torch.device):
        params, self.buffers = stack_module_state(models)
        # plain tensors: torch.func differentiates inside the step; grads on the stacked leaves would chain every
        # update into one autograd graph that grows with each step
        self.params = {k: v.detach() for k, v in params.items()}
        self.exp_avg = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(v) for k, v in self.params.items()}
        # Adam's step per run and parameter, as torch.optim keeps it (a skipped update does not count)
        self.steps = {k: torch.zeros(len(models), device=device) for k in self.params}

    @torch.no_grad()
    def adam_step(self, grads, loss, lr: list[float], clip: float, opt: dict) -> torch.Tensor:
        """train's guards, then torch.optim's functional Adam (the update train's optimizer makes) on each run's
        slice of the stacked tensors: a run whose loss or gradient is not finite skips the step (weights, moments
        and step count kept); a gradient norm above `clip` is scaled to it. Returns which runs stepped."""
        norm = torch.sqrt(sum(g.float().pow(2).flatten(1).sum(1) for g in grads.values()))
        ok = torch.isfinite(loss) & torch.isfinite(norm)
        coef = torch.where(norm > clip, clip / (norm + 1e-6), torch.ones_like(norm))
        keys = list(self.params)
        for i in torch.nonzero(ok).flatten().tolist():
            adam(
                [self.params[k][i] for k in keys],
                [grads[k][i] * coef[i] for k in keys],
                [self.exp_avg[k][i] for k in keys],
                [self.exp_avg_sq[k][i] for k in keys],
                [],
                [self.steps[k][i] for k in keys],
                amsgrad=False,
                beta1=opt["betas"][0],
                beta2=opt["betas"][1],
                lr=lr[i],
                weight_decay=opt["weight_decay"],
                eps=opt["eps"],
                maximize=False,
            )
        return ok

    @torch.no_grad()
    def unstack(self, i: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        """Run i's weights into its module and its Adam state into `opt` (train's optimizer over that module)."""
        for k, p in model.named_parameters():
            p.copy_(self.params[k][i])
            opt.state[p] = {
                "step": torch.tensor(float(self.steps[k][i]), dtype=torch.float32, device=p.device),
                "exp_avg": self.exp_avg[k][i].clone(),
                "exp_avg_sq": self.exp_avg_sq[k][i].clone(),
            }
        for k, b in model.named_buffers():
            b.copy_(self.buffers[k][i])


def train_together(
    cfgs: list[TrainConfig],
    outs: list[str | Path],
    data_dir: str | Path | None = None,
    dataset: vdata.Dataset | None = None,
) -> list[dict]:
    """Train runs that differ only in seed and beta as one stacked model; returns each run's last history row."""
    if len(cfgs) != len(outs) or not cfgs:
        raise VaelabError("train_together needs one output directory per config")
    for c in cfgs:
        if (why := unsupported(c)) is not None:
            raise VaelabError(f"runs cannot train together with {why} (train them one by one)")
    if len({group_key(c) for c in cfgs}) > 1:
        raise VaelabError(f"runs train together only when their configs differ in {' and '.join(VARY)} alone")
    outs = [Path(o) for o in outs]
    if len(set(outs)) < len(outs):
        raise VaelabError("train_together: two runs share an output directory")
    for o in outs:
        if Run(o, check=False).holds_run():
            raise VaelabError(f"{o}: already holds a run; continue it with vaelab train --resume")
        check_can_create(o)
    cfg0 = cfgs[0]
    device = resolve_device(cfg0.device)
    ds = dataset if dataset is not None else vdata.load(cfg0.dataset, data_dir)
    splits = vdata.make_splits(ds, cfg0.val_size, cfg0.train_size, cfg0.test_size, device)
    with contextlib.ExitStack() as locks:
        for o in outs:
            ensure_writable_dir(o)
            locks.enter_context(FolderLock(o, "this run directory"))
        return _train_group(cfgs, outs, ds, device, splits["train"], splits["val"])


def _train_group(cfgs, outs, ds, device, train_split, val_split) -> list[dict]:
    runs = []
    for cfg, out in zip(cfgs, outs):
        atomic_write_json(Run(out, check=False).config_path, cfg.to_dict())
        torch.manual_seed(cfg.seed)  # as train: the run's initial weights, then its noise stream continues from here
        runs.append(_Run(cfg, out, build_model(cfg, ds.shape, len(ds.classes)).to(device), device))
    group = _Group(runs, device, len(train_split))
    for epoch in range(cfgs[0].epochs):
        t0 = time.perf_counter()
        sums, seen, bad = group.epoch(train_split, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        for r_i, r in enumerate(runs):
            stats = {"sums": sums[r_i], "seen": float(seen[r_i]), "bad": bad[r_i], "seconds": seconds}
            _end_epoch(r, r_i, epoch, group.stack, stats, (group.steps_per_epoch, group.total_steps), ds, val_split)
    return [r.history[-1] for r in runs]


class _Group:
    """The runs' stacked weights and the one vmapped step that trains them all."""

    def __init__(self, runs: list[_Run], device: torch.device, n: int):
        cfg0 = runs[0].cfg
        self.runs, self.device, self.n, self.cfg0 = runs, device, n, cfg0
        self.stack = _Stack([r.model for r in runs], device)
        self.base = copy.deepcopy(runs[0].model).to("meta")  # the architecture, for functional_call on stacked weights
        self.steps_per_epoch = math.ceil(n / cfg0.batch_size)
        self.total_steps = max(cfg0.epochs * self.steps_per_epoch, 1)
        self.clip = cfg0.grad_clip if cfg0.grad_clip > 0 else math.inf
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg0.bf16)
        self.noise_dtype = torch.bfloat16 if cfg0.bf16 else torch.float32  # the dtype train's posterior draws in
        self.step_fn = vmap(grad_and_value(self._loss, has_aux=True))
        # Adam's hyperparameters exactly as train's optimizer holds them (its defaults)
        defaults = make_optimizer(cfg0, runs[0].model).defaults
        self.adam = {k: defaults[k] for k in ("betas", "eps", "weight_decay")}

    def _loss(self, p, b, x, eps, beta):
        with self.autocast:
            terms = functional_call(self.base, (p, b), (x,), {"eps": eps})
        loss = objective(terms, beta, self.cfg0)
        return loss, torch.stack([terms["recon"].mean(), terms["kl"].mean()])

    def epoch(self, train_split, epoch: int):
        """One epoch of every run: (loss/recon/KL sums, images trained on, non-finite steps) per run."""
        runs, device, cfg0 = self.runs, self.device, self.cfg0
        sums = torch.zeros(len(runs), 3, device=device, dtype=torch.float64)
        seen = torch.zeros(len(runs), device=device, dtype=torch.float64)
        bad = [0] * len(runs)
        orders = [list(vdata.minibatches(self.n, cfg0.batch_size, r.batches, device)) for r in runs]
        for i in range(self.steps_per_epoch):
            idx = [o[i] for o in orders]
            x = train_split.x[torch.stack(idx)]  # (runs, batch, C, H, W): one gather (every run's batch is as long)
            eps = torch.stack(
                [
                    torch.randn(len(j), cfg0.latent_dim, generator=r.noise, device=device, dtype=self.noise_dtype)
                    for j, r in zip(idx, runs)
                ]
            )
            loss, aux, ok = self._step(x, eps)
            self._count(ok.tolist(), bad, epoch)
            b = torch.tensor([len(j) for j in idx], device=device, dtype=torch.float64)
            good = ok.double()
            seen += b * good
            sums += torch.stack([loss.double() * b, aux[:, 0].double() * b, aux[:, 1].double() * b], 1) * good[:, None]
        return sums, seen, bad

    def _step(self, x, eps):
        runs = self.runs
        done = [r.step / self.total_steps for r in runs]
        beta_t = torch.tensor(
            [scheduled_beta(r.cfg, r.step, self.steps_per_epoch, d) for r, d in zip(runs, done)], device=self.device
        )
        grads, (loss, aux) = self.step_fn(self.stack.params, self.stack.buffers, x, eps, beta_t)
        lr = [r.core.lr_at(d) for r, d in zip(runs, done)]
        return loss, aux, self.stack.adam_step(grads, loss, lr, self.clip, self.adam)

    def _count(self, ok: list[bool], bad: list[int], epoch: int) -> None:
        """train's NaN guard per run (StepCore.guard): a good step counts, a run of max_bad_steps non-finite ones in
        a row diverges."""
        for r_i, (r, good) in enumerate(zip(self.runs, ok)):
            if r.core.guard(ok=good, epoch=epoch, run=r.out):
                r.step += 1
            else:
                bad[r_i] += 1


def _end_epoch(
    r: _Run, r_i: int, epoch: int, stack: _Stack, stats: dict, schedule: tuple[int, int], ds, val_split
) -> None:
    """Run r's slice into its module, validated on its own noise stream, and its checkpoint as train writes it."""
    cfg, (steps_per_epoch, total_steps) = r.cfg, schedule
    opt = make_optimizer(cfg, r.model)  # train's optimizer, holding this run's Adam state, for its checkpoint
    stack.unstack(r_i, r.model, opt)
    lr = r.core.lr_at(max(r.step - 1, 0) / total_steps) if r.step else cfg.lr  # the last step's
    for group in opt.param_groups:
        group["lr"] = lr
    row, _ = r.core.close_epoch(
        epoch=epoch + 1,
        step=r.step,
        beta=scheduled_beta(cfg, r.step, steps_per_epoch, r.step / total_steps),
        lr=lr,
        sums=stats["sums"],
        seen=stats["seen"],
        steps=steps_per_epoch,
        bad=stats["bad"],
        skipped_large=0,
        seconds=stats["seconds"],
        params=r.model.parameters(),
        validate=lambda: r.with_global_noise(lambda: average_terms(r.model, val_split)) if len(val_split) else {},
        run=r.out,
        trained_with="multirun",
    )
    bad_steps = sum(h["skipped_steps"] for h in r.history) + stats["bad"]
    record = lambda: checkpoint_record(  # noqa: E731
        cfg, epoch + 1, r.step, bad_steps, r.core.bad_in_row, r.model.state_dict(), opt.state_dict(), r.rng(),
        r.history, ds,
    )  # fmt: skip
    r.core.commit(row, record)

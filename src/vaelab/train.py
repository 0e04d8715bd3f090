"""One explicit training loop: seeded, resumable, NaN-guarded, writing a self-describing run directory."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import VaelabError, __version__
from . import data as vdata
from .config import TrainConfig, config_diff, from_dict
from .losses import NEEDS_CRITIC, TCCritic, objective, perceptual_term, scheduled_beta
from .models import VAE
from .models import build as build_model
from .tracking import Tracker
from .store import (CHECKPOINT, CONFIG, LEGACY_CHECKPOINT, METRICS, FolderLock, atomic_write_json, atomic_write_text,
                    check_can_create, ensure_writable_dir, load_tree, remove_stale_temps, save_tree)

CHECKPOINT_FORMAT = 2  # 1: vaelab 0.1's pickle (checkpoint.pt), refused; 2: safetensors + JSON skeleton


class TrainingDiverged(VaelabError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise VaelabError("device 'cuda' requested but CUDA is not available here (use --device cpu or auto)")
    return torch.device(name)


def fused_optimizer(cls: type[torch.optim.Optimizer], params, **kwargs) -> torch.optim.Optimizer:
    """Adam/AdamW as one fused kernel over all parameters (CPU and CUDA, torch >= 2.4): on the conv VAE the
    default per-tensor loop costs 5-15 % of a CPU training step (bench/train_throughput.py)."""
    params = [p for p in params if p.requires_grad]
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
        return cls(params, **kwargs)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return fused_optimizer(cls, model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, progress: float) -> float:
    """The learning rate's multiplier at `progress` in [0, 1] of training: constant, or cosine to 0 (Loshchilov &
    Hutter 2017). Progress counts steps, or wall-clock seconds under a time budget, so the schedule spans the
    budget however fast the machine is."""
    if not cfg.cosine:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def legacy_message(path: Path) -> str:
    return (f"{path} is a checkpoint of vaelab 0.1 (a pickle, which can run code when loaded); vaelab no longer loads "
            f"those. If you trust where it came from, convert it: vaelab convert {path.parent} --i-trust-this-file")


def load_checkpoint(run_dir: Path) -> dict:
    """Read RUN/checkpoint.safetensors: tensors and JSON only, so loading one can never execute code."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        if (Path(run_dir) / LEGACY_CHECKPOINT).is_file():
            raise VaelabError(legacy_message(Path(run_dir) / LEGACY_CHECKPOINT))
        raise VaelabError(f"{run_dir}: no checkpoint (was the run trained?)")
    ckpt = load_tree(path)
    need = {"format": int, "config": dict, "epoch": int, "model": dict, "history": list, "shape": list, "classes": list}
    for key, kind in need.items():
        if not isinstance(ckpt.get(key), kind):
            raise VaelabError(f"{path}: not a vaelab checkpoint (no valid '{key}')")
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise VaelabError(f"{path}: checkpoint format {ckpt['format']} is not one this vaelab reads "
                          f"({CHECKPOINT_FORMAT}); it was written by vaelab {ckpt.get('versions', {}).get('vaelab', '?')}")
    if len(ckpt["shape"]) != 3 or not all(isinstance(v, int) and v > 0 for v in ckpt["shape"]):
        raise VaelabError(f"{path}: not a vaelab checkpoint (bad image shape {ckpt['shape']})")
    return ckpt


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
        raise VaelabError(f"{old}: converting unpickles the file, which runs any code it holds; "
                          "pass --i-trust-this-file if you know where it came from")
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


def load_model(run_dir: Path, device: str | torch.device = "cpu",
               weights: str = "model") -> tuple[TrainConfig, VAE, dict]:
    """Rebuild the model from the config stored in its checkpoint (nanoGPT-style) and load its weights: `model`
    (what evaluation reads), or `train_model` (the raw latest weights of a run with --ema or --patience)."""
    ckpt = load_checkpoint(run_dir)
    path = Path(run_dir) / CHECKPOINT
    if weights not in WEIGHTS:
        raise VaelabError(f"unknown weights '{weights}' (known: {', '.join(WEIGHTS)})")
    if weights not in ckpt:
        raise VaelabError(f"{path}: holds no separate raw weights (the run trained without --ema or --patience, "
                          "so its model is its raw weights)")
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


def available_bytes(device: str | torch.device = "cpu") -> int:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(nbytes: int, what: str, device: str | torch.device = "cpu") -> None:
    """Refuse, before allocating, sizes whose tensors cannot fit in the device's free memory."""
    free = available_bytes(device)
    if nbytes > free:
        raise VaelabError(f"{what} needs about {nbytes / 2**30:,.1f} GiB but {torch.device(device).type} has "
                          f"{free / 2**30:,.1f} GiB free; use smaller sizes")


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


def _write_metrics(out: Path, history: list[dict]) -> None:
    """metrics.jsonl, one line per finished epoch, rewritten whole (atomically) from the run's history."""
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))


def _rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "batches": gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["batches"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _perceptual_features(cfg: TrainConfig, ds: vdata.Dataset, device: torch.device):
    """The reference classifier's feature map, frozen, on the training device (trained once and cached when
    absent: minutes on a CPU)."""
    from .classifier import reference_classifier

    clf, _ = reference_classifier(cfg.dataset, ds=ds)
    clf = clf.to(device).eval()
    for p in clf.parameters():
        p.requires_grad_(False)
    return clf.features


def _diverged(epoch: int, why: str, ckpt_path: Path) -> TrainingDiverged:
    kept = f"the last good checkpoint is kept in {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written"
    return TrainingDiverged(f"training diverged in epoch {epoch}: {why}; {kept} (try a lower --lr or --grad-clip)")


def train(cfg: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, resume: bool = False,
          dataset: vdata.Dataset | None = None, progress: bool | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train `cfg` into `out_dir`; with resume=True continue from its checkpoint. Returns the last epoch's metrics.

    Everything that can fail on bad input (device, data, splits, memory, a mismatching run) is checked before
    anything is written, so a failed start leaves no debris that blocks the corrected re-run."""
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    holds_run = ckpt_path.exists() or (out / LEGACY_CHECKPOINT).exists() or (out / CONFIG).exists()
    if holds_run and not resume:
        raise VaelabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    check_can_create(out)
    device = resolve_device(cfg.device)
    ds = dataset if dataset is not None else vdata.load(cfg.dataset, data_dir)
    splits = vdata.make_splits(ds, cfg.val_size, cfg.train_size, cfg.test_size, device)
    check_fits(model_bytes(cfg, ds.shape, len(ds.classes), min(cfg.batch_size, len(splits["train"]))),
               "training this model", device)

    ensure_writable_dir(out)
    with FolderLock(out, "this run directory"):
        return _train_locked(cfg, out, ds, device, splits["train"], splits["val"], progress, on_epoch_end)


def _train_locked(cfg, out, ds, device, train_split, val_split, progress, on_epoch_end) -> dict:
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if ckpt_path.exists() or (out / LEGACY_CHECKPOINT).exists():
        ckpt = load_checkpoint(out)
        if "exported_from" in ckpt:
            raise VaelabError(f"{out}: a model unpacked from {ckpt['exported_from']} (vaelab export) for evaluation; "
                              "it holds no optimizer state, so training cannot continue from it")
        stored = from_dict(ckpt["config"])
        if stored != cfg:
            raise VaelabError(f"{out}: resume with a different config than the run's ({config_diff(stored, cfg)})")
    remove_stale_temps(out)
    atomic_write_json(out / CONFIG, cfg.to_dict())
    if ckpt is not None:
        # A kill between the checkpoint's rename and the metrics' leaves metrics.jsonl an epoch behind;
        # the checkpoint's history is the truth.
        _write_metrics(out, ckpt["history"])
        if ckpt["epoch"] >= cfg.epochs:
            return ckpt["history"][-1]

    n = len(train_split)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ds.shape, len(ds.classes)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    # An exponential moving average of the weights (VDVAE): what validation, the checkpoint's "model" and so every
    # evaluation and sample use; the raw weights go to "train_model" so that training resumes from them.
    ema = None
    if cfg.ema:
        with torch.random.fork_rng(devices=[]):  # its throwaway initialisation must not move the run's random stream
            ema = build_model(cfg, ds.shape, len(ds.classes)).to(device).requires_grad_(False)
    # FactorVAE's critic: its own weights and optimizer (Kim & Mnih 2018: Adam 1e-4, betas 0.5, 0.9), made after the
    # model so the model's initial weights do not depend on the objective
    critic = TCCritic(cfg.latent_dim).to(device) if cfg.objective in NEEDS_CRITIC else None
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9)) if critic is not None else None
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch, step, total_bad, bad_in_row = 0, 0, 0, 0
    if ckpt is not None:  # "model" is what evaluation reads (the EMA, or the best epoch's weights with patience)
        model.load_state_dict(ckpt["train_model"] if "train_model" in ckpt else ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], gen)
        history, start_epoch, step, total_bad = ckpt["history"], ckpt["epoch"], ckpt["step"], ckpt["bad_steps"]
        bad_in_row = ckpt.get("bad_in_row", 0)
        if critic is not None:
            critic.load_state_dict(ckpt["critic"])
            critic_opt.load_state_dict(ckpt["critic_optimizer"])
    if ema is not None:
        ema.load_state_dict(ckpt.get("ema_model", ckpt["model"]) if ckpt is not None else model.state_dict())
    evaluated = ema if ema is not None else model  # the weights validation (and so early stopping) reads
    # Early stopping (patience): the best epoch's evaluated weights are kept as the checkpoint's "model".
    best_state = ckpt["model"] if (ckpt is not None and cfg.patience) else None
    best_val, best_epoch = _best(history, cfg.min_improvement)
    trained_s = sum(r["seconds"] for r in history)  # training seconds so far: what a time budget counts
    if (cfg.time_budget and trained_s >= cfg.time_budget) or (history and history[-1].get("stopped_early")):
        return history[-1]
    features = _perceptual_features(cfg, ds, device) if cfg.perceptual_weight > 0 else None
    tracker = Tracker(out, cfg) if cfg.tracker else None  # closed however training ends
    try:
        forward = torch.compile(model) if cfg.compile else model
        # bf16 autocast on CUDA and on CPUs (avx512_bf16/AMX make it pay); the loss terms stay fp32 (forward casts)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        total_steps = max(cfg.epochs * steps_per_epoch, 1)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        skip_above = cfg.skip_grad_norm if cfg.skip_grad_norm > 0 else math.inf
        params = [p for p in model.parameters() if p.requires_grad]
        pairs = (list(ema.parameters()), list(model.parameters())) if ema is not None else None
        show = sys.stderr.isatty() if progress is None else progress
        from tqdm.auto import tqdm

        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0 = time.perf_counter()
            sums = torch.zeros(3, device=device, dtype=torch.float64)
            seen, bad_epoch, steps_epoch, skipped_large = 0, 0, 0, 0
            out_of_time = False
            bar = tqdm(total=n, unit="img", desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
            for i, idx in enumerate(vdata.minibatches(n, cfg.batch_size, gen, device)):
                x = train_split.x[idx]
                y = train_split.y[idx] if cfg.conditional else None
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # one measure of how far training is, for the KL schedule, the objective and the learning rate
                done = _progress(cfg, step, total_steps, trained_s + time.perf_counter() - t0)
                beta_t = scheduled_beta(cfg, step, steps_per_epoch, done)
                with autocast:
                    terms = forward(x, y)
                if critic is not None:
                    terms["tc"] = critic(terms["z"].float())
                if features is not None:
                    terms["perceptual"] = perceptual_term(features, x, model.x_hat(terms["params"]))
                loss = objective(terms, beta_t, cfg, done, n_data=n)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = _grad_norm(params)
                steps_epoch += 1
                # One host sync per step: a non-finite loss or gradient skips the update.
                ok = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
                if ok and clip < math.inf:
                    _clip(params, clip, grad_norm)
                if not ok:  # NaN/inf guard (as in vdvae): skip the update; the run in a row counts across epochs
                    bad_in_row += 1
                    bad_epoch += 1
                    if bad_in_row >= cfg.max_bad_steps:
                        raise _diverged(epoch + 1, f"{bad_in_row} non-finite steps in a row", out / CHECKPOINT)
                elif float(grad_norm) > skip_above:  # a rare huge gradient (VDVAE's skip_threshold): no update
                    bad_in_row = 0
                    skipped_large += 1
                if not ok or float(grad_norm) > skip_above:
                    if cfg.time_budget and trained_s + time.perf_counter() - t0 >= cfg.time_budget:
                        out_of_time = True  # a skipped step spends the budget too
                        break
                    continue
                bad_in_row = 0
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, done)
                opt.step()
                if critic is not None:  # then the critic learns on this batch's codes (the model's are detached)
                    critic_loss = critic.loss(terms["z"].detach().float(), gen)
                    critic_opt.zero_grad(set_to_none=True)
                    critic_loss.backward()
                    critic_opt.step()
                if ema is not None:
                    torch._foreach_lerp_(*pairs, 1.0 - cfg.ema)  # ema += (1 - decay) * (w - ema), one fused pass
                step += 1
                if tracker is not None:
                    tracker.step(step, loss.detach(), terms, beta_t, opt.param_groups[0]["lr"])
                b = len(idx)
                seen += b
                sums += torch.stack([loss.detach() * b, terms["recon"].detach().sum(), terms["kl"].detach().sum()]).double()
                bar.update(b)
                if show and i % 20 == 0:
                    s = (sums / max(seen, 1)).tolist()
                    bar.set_postfix(loss=f"{s[0]:.1f}", recon=f"{s[1]:.1f}", kl=f"{s[2]:.2f}",
                                    img_s=f"{seen / (time.perf_counter() - t0):.0f}")
                if cfg.time_budget and trained_s + time.perf_counter() - t0 >= cfg.time_budget:
                    out_of_time = True  # stop cleanly: this partial epoch is checkpointed and the run is done
                    break
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            # An epoch that went bad never overwrites the last good checkpoint: too many skipped steps, weights that
            # are no longer finite, or validation terms that are not.
            if steps_epoch and seen == 0 and skipped_large:  # no update at all: the model would never train
                raise _diverged(epoch + 1, f"all {skipped_large} steps had a gradient norm above skip_grad_norm "
                                           f"{cfg.skip_grad_norm:g} and were skipped (raise it, or 0 = off)",
                                out / CHECKPOINT)
            if bad_epoch and (bad_epoch > cfg.max_skip_share * steps_epoch or seen == 0):
                raise _diverged(epoch + 1, f"{bad_epoch} of {steps_epoch} steps were non-finite and skipped "
                                           f"(more than max_skip_share {cfg.max_skip_share:g})", out / CHECKPOINT)
            if not all(bool(torch.isfinite(p).all()) for p in params):
                raise _diverged(epoch + 1, "the weights are no longer finite", out / CHECKPOINT)
            tr = (sums / max(seen, 1)).tolist()
            trained_s += seconds
            if ema is not None:  # buffers (none in vaelab's nets today) follow the raw model
                for b_ema, b in zip(ema.buffers(), model.buffers()):
                    b_ema.copy_(b)
            val = average_terms(evaluated, val_split) if len(val_split) else {}
            if not all(math.isfinite(v) for v in val.values()):
                raise _diverged(epoch + 1, "the validation ELBO is not finite", out / CHECKPOINT)
            total_bad += bad_epoch
            row = {"epoch": epoch + 1, "step": step,
                   "beta": scheduled_beta(cfg, step, steps_per_epoch, _progress(cfg, step, total_steps, trained_s)),
                   "lr": opt.param_groups[0]["lr"],
                   "train_loss": tr[0], "train_recon": tr[1], "train_kl": tr[2],
                   **{f"val_{k}": v for k, v in val.items()},
                   "seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0,
                   "skipped_steps": bad_epoch, "skipped_large_grad": skipped_large,
                   **({"partial": True} if out_of_time and seen < n else {})}
            if cfg.patience:
                if _improves(val["neg_elbo"], best_val, cfg.min_improvement):
                    best_val, best_epoch = val["neg_elbo"], epoch + 1
                    best_state = {k: v.detach().clone() for k, v in evaluated.state_dict().items()}
                row["best_epoch"] = best_epoch
                if epoch + 1 - best_epoch >= cfg.patience:
                    row["stopped_early"] = True  # converged by the patience rule: the best epoch is the model
            history.append(row)
            save_checkpoint(out, {
                "config": cfg.to_dict(), "epoch": epoch + 1, "step": step, "bad_steps": total_bad, "bad_in_row": bad_in_row,
                "model": best_state if best_state is not None else evaluated.state_dict(), "optimizer": opt.state_dict(),
                **({"train_model": model.state_dict()} if evaluated is not model or best_state is not None else {}),
                **({"ema_model": ema.state_dict()} if ema is not None and best_state is not None else {}),
                **({"critic": critic.state_dict(), "critic_optimizer": critic_opt.state_dict()}
                   if critic is not None else {}),
                "rng": _rng_state(gen), "history": history, "shape": list(ds.shape), "classes": list(ds.classes),
                "versions": {"vaelab": __version__, "torch": torch.__version__}})
            _write_metrics(out, history)
            if tracker is not None:
                tracker.epoch(row, evaluated, val_split.x, val_split.y)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, row)
            if out_of_time or row.get("stopped_early"):
                break
        return history[-1]
    finally:
        if tracker is not None:
            tracker.close(history[-1] if history else None)


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

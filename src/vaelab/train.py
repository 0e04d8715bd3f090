"""One explicit training loop: seeded, resumable, NaN-guarded, writing a self-describing run directory."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from . import VaelabError, __version__
from . import data as vdata
from .config import TrainConfig, from_dict
from .losses import kl_weight, objective
from .models import VAE
from .store import CHECKPOINT, CONFIG, METRICS, atomic_torch_save, atomic_write_json, atomic_write_text, read_json, remove_stale_temps


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


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int):
    if not cfg.cosine:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))


def load_checkpoint(run_dir: Path, map_location="cpu") -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise VaelabError(f"{run_dir}: no checkpoint (was the run trained?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # a foreign or damaged file: say so in one line
        raise VaelabError(f"{path}: cannot read checkpoint ({type(e).__name__})") from None


def load_model(run_dir: Path, device: str | torch.device = "cpu") -> tuple[TrainConfig, VAE, dict]:
    """Rebuild the model from the config stored in its checkpoint (nanoGPT-style) and load its weights."""
    ckpt = load_checkpoint(run_dir, map_location=device)
    cfg = from_dict(ckpt["config"])
    model = VAE.from_config(cfg, tuple(ckpt["shape"]), len(ckpt["classes"])).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return cfg, model, ckpt


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


def train(cfg: TrainConfig, out_dir: str | Path, data_dir: str | Path | None = None, resume: bool = False,
          dataset: vdata.Dataset | None = None, progress: bool | None = None,
          on_epoch_end: Callable[[int, dict], None] | None = None) -> dict:
    """Train `cfg` into `out_dir`; with resume=True continue from its checkpoint. Returns the last epoch's metrics."""
    out = Path(out_dir)
    ckpt_path = out / CHECKPOINT
    ckpt = None
    if ckpt_path.exists():
        if not resume:
            raise VaelabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
        ckpt = load_checkpoint(out)
        stored = from_dict(ckpt["config"])
        if stored != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in stored.to_dict().items() if getattr(cfg, k) != v}
            raise VaelabError(f"{out}: resume with a different config than the run's ({diff})")
    elif (out / CONFIG).exists() and not resume:
        raise VaelabError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    atomic_write_json(out / CONFIG, cfg.to_dict())
    if ckpt is not None:
        # A kill between the checkpoint's rename and the metrics' leaves metrics.jsonl an epoch behind;
        # the checkpoint's history is the truth.
        _write_metrics(out, ckpt["history"])
        if ckpt["epoch"] >= cfg.epochs:
            return ckpt["history"][-1]

    device = resolve_device(cfg.device)
    ds = dataset if dataset is not None else vdata.load(cfg.dataset, data_dir)
    splits = vdata.make_splits(ds, cfg.val_size, cfg.train_size, cfg.test_size, device)
    train_split, val_split = splits["train"], splits["val"]
    n = len(train_split)

    torch.manual_seed(cfg.seed)
    model = VAE.from_config(cfg, ds.shape, len(ds.classes)).to(device)
    if cfg.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    sched = make_scheduler(cfg, opt, cfg.epochs * steps_per_epoch)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history: list[dict] = []
    start_epoch, step, total_bad = 0, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"], gen)
        history, start_epoch, step, total_bad = ckpt["history"], ckpt["epoch"], ckpt["step"], ckpt["bad_steps"]
    forward = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    params = [p for p in model.parameters() if p.requires_grad]
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, device=device, dtype=torch.float64)
        seen, bad_in_row, bad_epoch = 0, 0, 0
        bar = tqdm(total=n, unit="img", desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
        for i, idx in enumerate(vdata.minibatches(n, cfg.batch_size, gen, device)):
            x = train_split.x[idx]
            y = train_split.y[idx] if cfg.conditional else None
            if cfg.channels_last and device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            beta_t = kl_weight(cfg.beta, step, warmup_steps)
            with autocast:
                terms = forward(x, y)
            loss = objective(terms, beta_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = _grad_norm(params)
            # One host sync per step: a non-finite loss or gradient skips the update.
            ok = bool(torch.isfinite(loss) & torch.isfinite(grad_norm))
            if ok and clip < math.inf:
                _clip(params, clip, grad_norm)
            if not ok:  # NaN/inf guard (as in vdvae): skip the update, count it, give up after too many in a row
                bad_in_row += 1
                bad_epoch += 1
                if bad_in_row >= cfg.max_bad_steps:
                    kept = f"last good checkpoint kept in {ckpt_path}" if ckpt_path.exists() else "no checkpoint yet"
                    raise TrainingDiverged(f"training diverged: {bad_in_row} non-finite steps in a row in epoch "
                                           f"{epoch + 1}; {kept} (try a lower --lr or --grad-clip)")
                continue
            bad_in_row = 0
            opt.step()
            sched.step()
            step += 1
            b = len(idx)
            seen += b
            sums += torch.stack([loss.detach() * b, terms["recon"].detach().sum(), terms["kl"].detach().sum()]).double()
            bar.update(b)
            if show and i % 20 == 0:
                s = (sums / max(seen, 1)).tolist()
                bar.set_postfix(loss=f"{s[0]:.1f}", recon=f"{s[1]:.1f}", kl=f"{s[2]:.2f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        tr = (sums / max(seen, 1)).tolist()
        val = average_terms(model, val_split) if len(val_split) else {}
        total_bad += bad_epoch
        row = {"epoch": epoch + 1, "step": step, "beta": kl_weight(cfg.beta, step, warmup_steps),
               "lr": opt.param_groups[0]["lr"],
               "train_loss": tr[0], "train_recon": tr[1], "train_kl": tr[2],
               **{f"val_{k}": v for k, v in val.items()},
               "seconds": seconds, "images_per_s": seen / seconds if seconds > 0 else 0.0,
               "skipped_steps": bad_epoch}
        history.append(row)
        atomic_torch_save(ckpt_path, {
            "config": cfg.to_dict(), "epoch": epoch + 1, "step": step, "bad_steps": total_bad,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": _rng_state(gen), "history": history, "shape": list(ds.shape), "classes": list(ds.classes),
            "versions": {"vaelab": __version__, "torch": torch.__version__}})
        _write_metrics(out, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, row)
    return history[-1]


def train_run_dir(run_dir: str | Path, data_dir=None, progress=None) -> dict:
    """Resume the run in run_dir from its stored config."""
    cfg = from_dict(read_json(Path(run_dir) / CONFIG))
    return train(cfg, run_dir, data_dir=data_dir, resume=True, progress=progress)

"""Experiment tracking: TensorBoard event files in RUN/tensorboard beside metrics.jsonl, which stays the record."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vaelab.core.errors import VaelabError

LOG_EVERY = 10  # training steps between logged points: enough for curves, cheap next to a step


class Tracker:
    """Per-step loss terms, learning rate and KL weight; per-epoch validation metrics, the KL per latent dimension
    as a histogram, reconstructions and prior samples as image grids; the config as text and hyper-parameters.
    One event directory per run, so `tensorboard --logdir STUDY` compares a whole study."""

    def __init__(self, out: Path, cfg):
        try:
            from torch.utils.tensorboard import SummaryWriter  # the optional 'tensorboard' extra
        except ImportError:
            raise VaelabError(
                "--tracker tensorboard needs the tensorboard package (pip install 'vaelab[tensorboard]')"
            ) from None
        self.cfg = cfg
        self.writer = SummaryWriter(log_dir=str(Path(out) / "tensorboard"))
        self.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=1) + "\n```", 0)

    def step(self, step: int, loss: torch.Tensor, terms: dict, beta: float, lr: float) -> None:
        if step % LOG_EVERY:
            return
        w = self.writer
        w.add_scalar("train/loss", float(loss), step)
        w.add_scalar("train/recon", float(terms["recon"].detach().mean()), step)
        w.add_scalar("train/kl", float(terms["kl"].detach().mean()), step)
        w.add_scalar("train/beta", beta, step)
        w.add_scalar("train/lr", lr, step)

    @torch.no_grad()
    def epoch(self, row: dict, model, val_x: torch.Tensor, val_y: torch.Tensor | None) -> None:
        w, step = self.writer, row["step"]
        for k, v in row.items():
            if k.startswith("val_") and isinstance(v, float):
                w.add_scalar(f"val/{k[4:]}", v, step)
        w.add_scalar("epoch/seconds", row["seconds"], step)
        if len(val_x):
            x = val_x[:8]
            y = val_y[:8] if model.num_classes else None
            t = model(x, y)
            if "kl_per_dim" in t:
                w.add_histogram("kl_per_dim", t["kl_per_dim"].float().mean(0), step)
            w.add_images("reconstructions", torch.cat([x.float() / 255.0, model.reconstruct(x, y).float()]).cpu(), step)
        w.add_images("samples", _prior_samples(model, 8).float().cpu(), step)
        w.flush()

    def close(self, final: dict | None = None) -> None:
        if final is not None:  # the config beside its result, for TensorBoard's hyper-parameter view
            hparams = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
            metrics = {f"hparam/{k}": v for k, v in final.items() if k.startswith("val_") and isinstance(v, float)}
            if metrics:
                self.writer.add_hparams(hparams, metrics, run_name=".")
        self.writer.close()


@torch.no_grad()
def _prior_samples(model, n: int) -> torch.Tensor:
    """n decoded means of codes from the model's prior (seed 0; a conditional model is given each class in turn),
    as generate.Sampler draws them: the engine logs them without reaching up to the analysis layer."""
    device = next(model.parameters()).device
    z = model.prior.sample(n, torch.Generator().manual_seed(0)).to(device)
    y = (torch.arange(n) % model.num_classes).to(device) if model.num_classes else None
    return model.likelihood.mean(model.decode(z, y).float())

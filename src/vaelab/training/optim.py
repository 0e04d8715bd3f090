"""The optimiser and the learning-rate schedule both trainers use."""

from __future__ import annotations

import math

import torch

from vaelab.runs.config import TrainConfig


def fused_optimizer(cls: type[torch.optim.Optimizer], params, **kwargs) -> torch.optim.Optimizer:
    """Adam/AdamW as one fused kernel over all parameters (CPU and CUDA, torch >= 2.4): on the conv VAE the
    default per-tensor loop costs 5-15 % of a CPU training step (bench/train_throughput.py)."""
    params = [p for p in params if p.requires_grad]
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without a fused kernel
        return cls(params, **kwargs)


def normalize_gradients(opt: torch.optim.Optimizer, args, kwargs) -> None:
    """Each parameter's gradient divided by its L2 norm (+ 1e-7) before the step: Tomczak & Welling's AdamNormGrad
    (jmtomczak/vae_vampprior, utils/optimizer.py), the optimiser behind their published likelihoods."""
    for group in opt.param_groups:
        for p in group["params"]:
            if p.grad is not None:
                p.grad.div_(torch.linalg.vector_norm(p.grad) + 1e-7)


def _adam_normgrad(params, **kwargs) -> torch.optim.Optimizer:
    opt = fused_optimizer(torch.optim.Adam, params, **kwargs)
    opt.register_step_pre_hook(normalize_gradients)
    return opt


# runs.config.OPTIMIZERS names them (and says what each is); here each is built
_BUILD = {
    "adam": lambda params, **kw: fused_optimizer(torch.optim.Adam, params, **kw),
    "adamw": lambda params, **kw: fused_optimizer(torch.optim.AdamW, params, **kw),
    "adam_normgrad": _adam_normgrad,
}


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    return _BUILD[cfg.optimizer](model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, progress: float) -> float:
    """The learning rate's multiplier at `progress` in [0, 1] of training: constant, or cosine to 0 (Loshchilov &
    Hutter 2017). Progress counts steps, or wall-clock seconds under a time budget, so the schedule spans the
    budget however fast the machine is."""
    if not cfg.cosine:
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

"""The training presets (`vaelab train --preset NAME`): named base configs, the deeper models sized for a machine."""

from __future__ import annotations

from vaelab.core.errors import VaelabError
from vaelab.runs.config import TrainConfig

# Presets: the study's reference settings per dataset (the seed study used latent 2..128 conv VAEs).
PRESETS: dict[str, TrainConfig] = {
    "fashion-mnist": TrainConfig(dataset="fashion-mnist", latent_dim=16),
    "cifar10": TrainConfig(dataset="cifar10", latent_dim=128),
    "cifar10-lossless": TrainConfig(dataset="cifar10-lossless", latent_dim=128, val_size=500),
    "demo": TrainConfig(dataset="fashion-mnist", latent_dim=16, epochs=5, train_size=20000, iwae_samples=100),
}
# The deeper models, sized for a machine: a hierarchical VAE with the mixture-of-logistics decoder, trained for a
# count budget (the same model on every machine; epochs only bound it) with a cosine schedule over the budget and an
# EMA of the weights. The step counts are what the wall-clock budgets these presets had bought where they were
# measured (docs/benchmarks.md): an hour and ten minutes on 2 CPU cores, twenty minutes of an H200.
_HVAE = dict(model="hierarchical", likelihood="dmol", ema=0.999, cosine=True, lr=2e-3, epochs=10_000)
PRESETS.update(
    {
        # 2 CPU cores: about 100-200 images/s, 8,000 steps about an hour; evaluation on 1,000 test images keeps K = 100
        # IWAE to minutes
        "cifar10-hvae-cpu": TrainConfig(
            dataset="cifar10",
            latent_dim=8,
            width=32,
            depth=1,
            latent_groups=1,
            batch_size=64,
            budget="8000steps",
            test_size=1000,
            **_HVAE,
        ),
        # 2,000 steps, about ten minutes: a shorter EMA horizon (~100 steps) than the hour-long runs' (~1,000)
        "fashion-mnist-hvae-cpu": TrainConfig(
            dataset="fashion-mnist",
            latent_dim=8,
            width=32,
            depth=1,
            latent_groups=1,
            batch_size=64,
            budget="2000steps",
            **{**_HVAE, "ema": 0.99},
        ),
        # one GPU: wider and deeper, two groups per resolution, bf16 autocast. No skip_grad_norm: at 3000 it skipped every
        # step of this model on an H200 (2026-11-30; its gradient norms start far above that), so it never trained
        "cifar10-hvae-gpu": TrainConfig(
            dataset="cifar10",
            latent_dim=16,
            width=128,
            depth=2,
            latent_groups=2,
            batch_size=128,
            budget="40000steps",  # ~33 steps/s on an H200 (2026-11-30): about twenty minutes
            bf16=True,
            grad_clip=200.0,
            **_HVAE,
        ),
    }
)


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise VaelabError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]

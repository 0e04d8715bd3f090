"""The built-in study presets: the comparative study at several sizes, the model families, the networks and the
disentangling objectives."""

from __future__ import annotations

from vaelab.core.errors import VaelabError
from vaelab.study.spec import StudySpec, parse_spec

# The study's reference latent size for each dataset's beta sweep.
BETA_LATENT = {"fashion-mnist": 16, "cifar10": 128}


PRESETS: dict[str, dict] = {
    "seed": {  # the full comparative study
        "name": "seed",
        "base": {"epochs": 40, "iwae_samples": 100},
        "sweep": [
            {
                "grid": {
                    "dataset": ["fashion-mnist", "cifar10"],
                    "latent_dim": [2, 4, 8, 16, 32, 64, 128],
                    "seed": [0, 1, 2],
                }
            },
            {
                "zip": {"dataset": list(BETA_LATENT), "latent_dim": list(BETA_LATENT.values())},
                "grid": {"beta": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "seed": [0, 1, 2]},
            },
        ],
    },
    "quick": {  # the same shape, reduced to finish in minutes on 2 CPU cores
        "name": "quick",
        "base": {"epochs": 4, "train_size": 6000, "val_size": 1000, "test_size": 1000, "iwae_samples": 20},
        "sweep": [
            {"grid": {"dataset": ["fashion-mnist", "cifar10"], "latent_dim": [2, 8, 32], "seed": [0, 1, 2]}},
            {
                "zip": {"dataset": ["fashion-mnist", "cifar10"], "latent_dim": [8, 32]},
                "grid": {"beta": [0.5, 1.0, 4.0], "seed": [0, 1, 2]},
            },
        ],
    },
}


# The study's span as far as two hours on 2 CPU cores allow (--jobs 2 --threads 1): both datasets, full training
# sets, latent 2..128 at beta = 1 and beta 0.5..8 at latent 32 (its beta = 1 cell shared with the latent sweep),
# 3 seeds = 42 runs. Budgets are counts, so every machine trains the same models: Fashion-MNIST 4,000 steps of 128
# (9.3 epochs), CIFAR-10 3,000 steps (8.5 epochs), bf16 autocast, a constant learning rate and an EMA of the weights
# (decay 0.999, warmed up), which is what validation, evaluation and the snapshots read: on Fashion-MNIST it gave
# the best model at the end and at half the budget, better than cosine annealing or a run trained for half as long
# (bench/ema_snapshots.py, docs/benchmarks.md). Each run keeps its model at 1/4 and 1/2 of the budget, so every
# finding is traced along training (evaluated with the IWAE at K = 5); the final IWAE uses K = 20 over the whole
# test set. Cut to fit: latent 4, 16 and 64 and beta 16 of the `seed` grid, and training length (the summary says
# how far each cell is from converged).
_STD_BASE = {"bf16": True, "ema": 0.999, "epochs": 10000, "iwae_samples": 20, "snapshots": "0.25,0.5"}


_STD_BUDGET = {"fashion-mnist": "4000steps", "cifar10": "3000steps"}
STD_BETA_LATENT = 32


PRESETS["standard"] = {
    "name": "standard",
    "base": _STD_BASE,
    "sweep": [
        *(
            {"grid": {"latent_dim": [2, 8, 32, 128], "seed": [0, 1, 2]}, "base": {"dataset": d, "budget": b}}
            for d, b in _STD_BUDGET.items()
        ),
        *(
            {
                "grid": {"beta": [0.5, 2.0, 8.0], "seed": [0, 1, 2]},
                "base": {"dataset": d, "latent_dim": STD_BETA_LATENT, "budget": b},
            }
            for d, b in _STD_BUDGET.items()
        ),
    ],
}


# The model families of the model-parts issue against the reference VAE, at the `quick` sizes (a CPU preset: four
# epochs say which way each family moves the numbers, not where it converges; the model kept at two epochs says
# whether a verdict was already there). Each family is one [[sweep]] so
# that combinations the config refuses (IAF with the VampPrior) never appear.
_FAMILY_GRID = {"dataset": ["fashion-mnist", "cifar10"], "seed": [0, 1, 2]}


PRESETS["families"] = {
    "name": "families",
    "base": {
        "epochs": 4,
        "train_size": 6000,
        "val_size": 1000,
        "test_size": 1000,
        "iwae_samples": 50,
        "latent_dim": 16,
        "ema": 0.999,
        "snapshots": "0.5",  # the findings at half of the 4 epochs too
    },
    "sweep": [
        {"grid": {**_FAMILY_GRID, "posterior": ["gaussian", "iaf"]}},
        {"grid": _FAMILY_GRID, "base": {"prior": "vamp"}},
        {"grid": _FAMILY_GRID, "base": {"objective": "free_bits", "free_bits": 0.25}},
        {"grid": _FAMILY_GRID, "base": {"kl_schedule": "cyclical"}},
    ],
}


# The networks at equal compute (the deeper-models issue): the reference conv net, a residual net and the
# hierarchical VAE, all with the mixture-of-logistics decoder and the same recipe, each trained for 1.5e13 FLOPs
# (counted from the model, torch.utils.flop_counter: the same on every machine). On 2 CPU cores that is about 300 s
# for conv (the slowest per FLOP here), 2 minutes for resnet and 3 for hierarchical; 3 seeds = 18 runs, the model at
# half the budget kept. Raise the budget (and the widths) on a GPU.
_ARCH_GRID = {"dataset": ["fashion-mnist", "cifar10"], "seed": [0, 1, 2]}


PRESETS["architectures"] = {
    "name": "architectures",
    "base": {
        "likelihood": "dmol",
        "budget": "1.5e13flops",
        "epochs": 10000,
        "val_size": 1000,
        "test_size": 1000,
        "iwae_samples": 20,
        "cosine": True,
        "ema": 0.99,
        "lr": 2e-3,
        "batch_size": 64,
        "snapshots": "0.5",
    },
    "sweep": [
        {"grid": {**_ARCH_GRID, "net": ["conv"]}, "base": {"latent_dim": 32}},
        {"grid": _ARCH_GRID, "base": {"net": "resnet", "width": 32, "depth": 1, "latent_dim": 32}},
        {
            "grid": _ARCH_GRID,
            "base": {"model": "hierarchical", "width": 32, "depth": 1, "latent_dim": 8, "latent_groups": 1},
        },
    ],
}


# Disentanglement measured (the disentanglement issue): β-VAE at three values of β and one setting each of β-TCVAE,
# FactorVAE and DIP-VAE-I, three seeds, on shapes2d at 32x32 with the disentanglement studies' conv4 net and a
# Bernoulli decoder (Locatello et al. 2019's setup, shorter and smaller): 18 runs of 10,000 steps of 64 (640,000
# images, over 10x the 75-second runs of vaelab 0.2, whose 36 runs saw 33,000-80,000 images), an EMA, the models at
# 1/4 and 1/2 kept; 32x32 makes a step 3.5x cheaper than 64x64, about an hour on 2 CPU cores. Metrics from about
# 63,000 encodings (disentangle.Sizes).
_DIS_BASE = {
    "dataset": "shapes2d-32",
    "net": "conv4",
    "likelihood": "bernoulli",
    "latent_dim": 10,
    "batch_size": 64,
    "lr": 1e-3,
    "budget": "10000steps",
    "ema": 0.999,
    "snapshots": "0.25,0.5",
    "epochs": 10000,
    "train_size": 100000,
    "val_size": 1000,
    "test_size": 1000,
    "iwae_samples": 10,
}


_SEEDS = {"seed": [0, 1, 2]}


PRESETS["disentangle"] = {
    "name": "disentangle",
    "base": _DIS_BASE,
    "sweep": [
        {"grid": {"beta": [1.0, 4.0, 16.0], **_SEEDS}},
        {"grid": _SEEDS, "base": {"objective": "beta_tcvae", "beta": 6.0}},
        {"grid": _SEEDS, "base": {"objective": "factor_vae", "factor_gamma": 30.0}},
        {"grid": _SEEDS, "base": {"objective": "dip_vae_i", "dip_lambda": 5.0}},
    ],
}


def preset_spec(name: str) -> StudySpec:
    if name not in PRESETS:
        raise VaelabError(f"unknown study preset '{name}' (known: {', '.join(PRESETS)})")
    return parse_spec(PRESETS[name], f"preset:{name}")

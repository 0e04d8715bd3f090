"""The built-in study presets: the comparative study at several sizes, the model families, the networks and the
disentangling objectives."""

from __future__ import annotations

from ..errors import VaelabError
from .spec import StudySpec, parse_spec

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


# The study's span trained as far as two hours on 2 CPU cores allow (the time-to-quality issue): both datasets, full
# training sets, latent 2..128 at beta = 1 and beta 0.5..16 at the reference latent size, 3 seeds = 45 runs. Each run
# has a wall-clock budget (Fashion-MNIST 150 s, CIFAR-10 210 s, one core each with --jobs 2 --threads 1) with the
# learning rate cosine-annealed over it, bf16 autocast, and early stopping on the validation ELBO that keeps the best
# epoch; results.csv says per run which epoch was best and whether it stopped early. IWAE with K = 20 over the whole
# test set (K = 100 would cost 140-220 s of one core per run). Cut to fit: latent 4 and 64 and beta 2 and 8 of the
# `seed` grid, and training length (a few epochs; the summary states how far from convergence each cell stopped).
_STD_BASE = {"bf16": True, "cosine": True, "patience": 3, "min_improvement": 0.001, "epochs": 10000, "iwae_samples": 20}


_STD_BUDGET = {"fashion-mnist": 150.0, "cifar10": 210.0}


PRESETS["standard"] = {
    "name": "standard",
    "base": _STD_BASE,
    "sweep": [
        *(
            {"grid": {"latent_dim": [2, 8, 32, 128], "seed": [0, 1, 2]}, "base": {"dataset": d, "time_budget": t}}
            for d, t in _STD_BUDGET.items()
        ),
        *(
            {
                "grid": {"beta": [0.5, 1.0, 4.0, 16.0], "seed": [0, 1, 2]},
                "base": {"dataset": d, "latent_dim": BETA_LATENT[d], "time_budget": t},
            }
            for d, t in _STD_BUDGET.items()
        ),
    ],
}


# The model families of the model-parts issue against the reference VAE, at the `quick` sizes (a CPU preset: four
# epochs say which way each family moves the numbers, not where it converges). Each family is one [[sweep]] so
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
    },
    "sweep": [
        {"grid": {**_FAMILY_GRID, "posterior": ["gaussian", "iaf"]}},
        {"grid": _FAMILY_GRID, "base": {"prior": "vamp"}},
        {"grid": _FAMILY_GRID, "base": {"objective": "free_bits", "free_bits": 0.25}},
        {"grid": _FAMILY_GRID, "base": {"kl_schedule": "cyclical"}},
    ],
}


# The networks at an equal wall-clock budget per run (the deeper-models issue): the reference conv net, a residual
# net and the hierarchical VAE, all with the mixture-of-logistics decoder and the same recipe. A CPU-sized preset:
# five minutes a run; raise time_budget (and the widths) on a GPU.
_ARCH_GRID = {"dataset": ["fashion-mnist", "cifar10"], "seed": [0, 1]}


PRESETS["architectures"] = {
    "name": "architectures",
    "base": {
        "likelihood": "dmol",
        "time_budget": 300.0,
        "epochs": 10000,
        "val_size": 1000,
        "test_size": 1000,
        "iwae_samples": 20,
        "cosine": True,
        "ema": 0.99,
        "lr": 2e-3,
        "batch_size": 64,
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


# Disentanglement measured (the disentanglement issue): four objectives of the objective registry, each at three
# values of its main weight, three seeds, on shapes2d with the disentanglement studies' conv4 net and a Bernoulli
# decoder (Locatello et al. 2019's setup, much shorter). Sized for one hour on 2 CPU cores: 75 s of training a run
# (about 60,000 images; their models saw 300,000 steps of 64), metrics from about 63,000 encodings (disentangle.Sizes).
# Cut to get there: DIP-VAE-II and controlled capacity (implemented, tested) are not in the grid.
_DIS_BASE = {
    "dataset": "shapes2d",
    "net": "conv4",
    "likelihood": "bernoulli",
    "latent_dim": 10,
    "batch_size": 64,
    "lr": 1e-3,
    "time_budget": 75.0,
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
        {"grid": {"beta": [2.0, 6.0, 10.0], **_SEEDS}, "base": {"objective": "beta_tcvae"}},
        {"grid": {"factor_gamma": [10.0, 30.0, 100.0], **_SEEDS}, "base": {"objective": "factor_vae"}},
        {"grid": {"dip_lambda": [1.0, 5.0, 20.0], **_SEEDS}, "base": {"objective": "dip_vae_i"}},
    ],
}


def preset_spec(name: str) -> StudySpec:
    if name not in PRESETS:
        raise VaelabError(f"unknown study preset '{name}' (known: {', '.join(PRESETS)})")
    return parse_spec(PRESETS[name], f"preset:{name}")

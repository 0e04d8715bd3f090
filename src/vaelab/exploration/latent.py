"""Latent-space tools: encode a split, interpolate (linear and spherical), traverse dimensions, the 2-D manifold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.stats import norm

from vaelab import data as vdata
from vaelab.evaluation.codes import encode_run, encode_split, linear_probe, organisation, probe_baselines  # noqa: F401 (the API)
from vaelab.evaluation.generate import Sampler, decode_mean, nearest_neighbours
from vaelab.exploration import plots
from vaelab.runs.run import Run


def _fractions(steps: int | Sequence[float], device) -> torch.Tensor:
    """`steps` evenly spaced fractions from 0 to 1, or the given fractions, as a column."""
    if isinstance(steps, int):
        return torch.linspace(0, 1, steps, device=device)[:, None]
    return torch.as_tensor(steps, dtype=torch.float32, device=device).reshape(-1, 1)


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int | Sequence[float]) -> torch.Tensor:
    """Points on the line from z0 to z1: `steps` evenly spaced, or at the given fractions t."""
    t = _fractions(steps, z0.device)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int | Sequence[float]) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents): keeps the norm typical of N(0, I)."""
    t = _fractions(steps, z0.device)
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp(min=1e-12)
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    if so.abs() < 1e-6:  # (anti)parallel: the great circle is undefined, fall back to a straight line
        return lerp(z0, z1, steps)
    return (torch.sin((1 - t) * omega) / so) * z0 + (torch.sin(t * omega) / so) * z1


def traverse(z: torch.Tensor, dims: list[int], values: torch.Tensor) -> torch.Tensor:
    """For each dim, copies of z with that coordinate set to each value: (len(dims) * len(values), latent_dim)."""
    out = z.repeat(len(dims) * len(values), 1)
    for i, d in enumerate(dims):
        out[i * len(values) : (i + 1) * len(values), d] = values
    return out


def manifold_grid(n: int, device="cpu") -> torch.Tensor:
    """An n x n grid over the latent plane at Gaussian quantiles (Kingma & Welling 2014, fig. 4), row-major, z2 down."""
    q = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, n)), dtype=torch.float32, device=device)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


# ---------------------------------------------------------------- class structure in latent space


def class_centroids(mu: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Mean code of each class (NaN rows for classes with no examples)."""
    out = np.full((n_classes, mu.shape[1]), np.nan)
    for k in range(n_classes):
        if (y == k).any():
            out[k] = mu[y == k].mean(0)
    return out


def attribute_vector(centroids: np.ndarray, source: int, target: int) -> np.ndarray:
    """The direction from one class to another (e.g. sneaker -> ankle boot): a centroid difference."""
    return centroids[target] - centroids[source]


def arithmetic(z: np.ndarray, vector: np.ndarray, alphas) -> np.ndarray:
    """z + alpha * vector for each alpha: a strip from the image towards (and past) the target class."""
    return np.stack([z + a * vector for a in alphas])


# ---------------------------------------------------------------- `vaelab explore`

NN_POOL = 60_000  # training images searched for each GMM sample's nearest neighbour


@torch.no_grad()
def explore(run_dir, data_dir=None, out_dir=None) -> tuple[list[tuple[str, str]], dict]:
    """Figures of latent exploration and conditional generation into RUN/explore/; returns (files, measures)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir or run_dir / "explore")
    cfg, model, ckpt = Run(run_dir).load()
    classes = list(ckpt["classes"])
    ds = vdata.load(cfg.dataset, data_dir)
    mu_tr, _, y_tr = encode_run(run_dir, "train", data_dir, n=10000, dataset=ds)
    mu_te, _, y_te = encode_run(run_dir, "test", data_dir, dataset=ds)
    measures = organisation(mu_tr, y_tr, mu_te, y_te)
    figs: list[tuple[str, str]] = []

    def save(fig, name, caption):
        plots.save_fig(fig, out_dir / name)
        figs.append((name, caption))

    gen = Sampler(model, lambda: (mu_tr, y_tr), n_classes=len(classes))
    if not model.num_classes:  # attribute vectors only mean something in an unconditional code
        _arithmetic_figure(save, model, cfg, classes, class_centroids(mu_tr, y_tr, len(classes)), mu_te, y_te)
    rows = [gen.images(8, "prior" if model.num_classes else "class-gaussian", k, seed=k) for k in range(len(classes))]
    how = (
        "the CVAE decoder given each label."
        if model.num_classes
        else "a full-covariance Gaussian fitted to each class's codes, decoded."
    )
    save(
        plots.image_rows(rows, [c[:12] for c in classes]), "class_conditional.png", f"Class-conditional samples: {how}"
    )
    if not model.num_classes:
        _mixture_figure(save, gen, cfg, ds)
    return figs, measures


def _arithmetic_figure(save, model, cfg, classes, centroids, mu_te, y_te) -> None:
    """A test image plus alpha times the centroid difference of each of the dataset's attribute pairs."""
    rows, labels = [], []
    alphas = np.linspace(0, 1.5, 7)
    for src, dst in vdata.spec(cfg.dataset).attribute_pairs:
        s, t = classes.index(src), classes.index(dst)
        first = int(np.flatnonzero(y_te == s)[0])
        z = arithmetic(mu_te[first], attribute_vector(centroids, s, t), alphas)
        rows.append(decode_mean(model, torch.as_tensor(np.asarray(z), dtype=torch.float32)))
        labels.append(f"{src} + α·({dst} − {src})")
    if rows:
        save(
            plots.image_rows(rows, labels, col_labels=[f"α={a:g}" for a in alphas]),
            "attribute_arithmetic.png",
            "Latent arithmetic: a test image plus α times the centroid difference between two classes.",
        )


def _mixture_figure(save, gen: Sampler, cfg, ds) -> None:
    """Samples from p(z) and from a GMM on the aggregate posterior, with each GMM sample's nearest training image."""
    prior, mixture = gen.images(10, "prior"), gen.images(10, "gmm")
    # the images the run trained on, at most NN_POOL of them (shapes2d's 663,552 would be 11 GB as floats)
    pool, _ = vdata.split_indices(len(ds.x_train), cfg.val_size, cfg.train_size)
    train_x = np.asarray(ds.x_train[vdata.subsample(pool, NN_POOL)])
    nn_idx = nearest_neighbours((mixture.numpy() * 255), train_x.astype(np.float32))
    rows = [prior, mixture, torch.from_numpy(train_x[nn_idx])]
    save(
        plots.image_rows(rows, [f"z ~ p(z) ({cfg.prior})", "z ~ GMM", "nearest train"]),
        "prior_vs_mixture.png",
        "Samples from the model's prior p(z) vs from a 10-component GMM fitted to the aggregate posterior (Ghosh et "
        "al. 2020), with each GMM sample's nearest training image (pixel L2) — a memorisation check.",
    )

"""Figures: image grids (Pillow) and matplotlib plots of runs and studies, in one consistent style."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.manifold import TSNE  # noqa: E402

from vaelab.core.store import atomic_write_bytes  # noqa: E402


def to_uint8_images(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] or uint8 -> (N, H, W, C) uint8."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
    return a.transpose(0, 2, 3, 1)


def image_grid(x, nrow: int, pad: int = 2, scale: int = 2, pad_value: int = 255) -> Image.Image:
    """Tile images row-major into a grid with white gutters, upscaled (nearest) so small images stay legible."""
    imgs = to_uint8_images(x)
    n, h, w, c = imgs.shape
    ncol = nrow
    nrows = -(-n // ncol)
    grid = np.full((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = imgs[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def save_image(img: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------- matplotlib figures

DATASET_COLORS = {"fashion-mnist": "#1f77b4", "cifar10": "#d62728", "cifar10-lossless": "#9467bd"}
plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "font.size": 9,
        "axes.titlesize": 10,
        "savefig.bbox": "tight",
    }
)


def save_fig(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(
        img[..., 0] if img.shape[-1] == 1 else img,
        cmap="gray" if img.shape[-1] == 1 else None,
        vmin=0,
        vmax=255,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)


def image_rows(
    rows: list, row_labels: list[str], title: str = "", col_labels: list[str] | None = None, cell: float = 0.75
):
    """A figure of image rows (each (N, C, H, W)) with a label left of each row."""
    rows = [to_uint8_images(r) for r in rows]
    ncol = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows),
        ncol,
        figsize=(cell * ncol + 1.2, cell * len(rows) + (0.5 if title else 0.1)),
        squeeze=False,
        gridspec_kw=dict(wspace=0.05, hspace=0.08),
    )
    for i, r in enumerate(rows):
        for j in range(ncol):
            ax = axes[i, j]
            if j < len(r):
                _show(ax, r[j])
            else:
                ax.axis("off")
            if i == 0 and col_labels and j < len(col_labels):
                ax.set_title(col_labels[j], fontsize=7)
        axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, y=1.0)
    return fig


def curves(history: list[dict], title: str = ""):
    """Loss, reconstruction and KL per epoch, train and validation."""
    ep = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for ax, (name, tr, va) in zip(
        axes,
        [
            ("negative ELBO / loss (nats)", "train_loss", "val_neg_elbo"),
            ("reconstruction (nats)", "train_recon", "val_recon"),
            ("KL (nats)", "train_kl", "val_kl"),
        ],
    ):
        ax.plot(ep, [h[tr] for h in history], "o-", ms=3, label="train")
        if va in history[0]:
            ax.plot(ep, [h[va] for h in history], "s--", ms=3, label="validation")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    axes[0].legend()
    if title:
        fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def kl_per_dim_bars(kl_per_dim: list[float], au_variance: list[float], threshold: float = 0.01, title: str = ""):
    """KL of each latent dimension, sorted, coloured by whether the unit is active (Burda et al. 2016)."""
    kl = np.asarray(kl_per_dim)
    active = np.asarray(au_variance) > threshold
    order = np.argsort(-kl)
    fig, ax = plt.subplots(figsize=(min(10, 2 + 0.12 * len(kl)), 2.8))
    ax.bar(range(len(kl)), kl[order], color=np.where(active[order], "#2ca02c", "#bbbbbb"))
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(title or f"KL per dimension: {int(active.sum())} of {len(kl)} units active (green)")
    return fig


def latent_scatter(points: np.ndarray, labels: np.ndarray, classes: list[str], title: str, ax=None):
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(4.2, 3.8))
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(classes):
        m = labels == k
        ax.scatter(points[m, 0], points[m, 1], s=4, color=cmap(k % 10), label=name, alpha=0.7, linewidths=0)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig if own else ax.figure


def latent_maps(mu: np.ndarray, labels: np.ndarray, classes: list[str], seed: int = 0):
    """The test set's posterior means in 2-D: PCA, t-SNE, and UMAP when it is installed."""
    maps = {}
    if mu.shape[1] == 2:
        maps["latent plane (z1, z2)"] = mu
    else:
        maps["PCA"] = PCA(2, random_state=seed).fit_transform(mu)
    n = len(mu)
    maps["t-SNE"] = TSNE(2, perplexity=min(30.0, max(2.0, (n - 1) / 3)), init="pca", random_state=seed).fit_transform(
        mu
    )
    try:
        import umap  # type: ignore  # optional: umap-learn is no dependency; t-SNE serves without it

        maps["UMAP"] = umap.UMAP(random_state=seed).fit_transform(mu)
    except ImportError:
        pass
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps) + 1.8, 3.9), squeeze=False)
    for ax, (name, pts) in zip(axes[0], maps.items()):
        latent_scatter(pts, labels, classes, name, ax)
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), markerscale=3, frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _errorbar(ax, x, y, yerr, label, color, marker="o"):
    ax.errorbar(x, y, yerr=np.nan_to_num(yerr), fmt=f"{marker}-", ms=4, capsize=3, label=label, color=color)


def metric_vs_latent(table, metrics: list[tuple[str, str]]):
    """One panel per metric, one line per dataset, error bars = the 95 % CI of the mean over seeds."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.1 * len(metrics), 2.9), squeeze=False)
    for ax, (m, label) in zip(axes[0], metrics):
        for ds, sub in table.groupby("dataset"):
            if m in sub and sub[m].notna().any():
                _errorbar(ax, sub["latent_dim"], sub[m], sub.get(f"{m}_ci"), ds, DATASET_COLORS.get(ds))
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latent_dim")
        ax.set_title(label)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def rate_distortion(table):
    """The beta trade-off: rate (KL) vs distortion (reconstruction), one point per beta, per dataset."""
    groups = list(table.groupby("dataset"))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.3 * len(groups), 3.4), squeeze=False)
    for ax, (ds, sub) in zip(axes[0], groups):
        sub = sub.sort_values("beta")
        ax.errorbar(
            sub["kl"],
            sub["recon"],
            xerr=np.nan_to_num(sub.get("kl_ci")),
            yerr=np.nan_to_num(sub.get("recon_ci")),
            fmt="o-",
            color=DATASET_COLORS.get(ds),
            capsize=3,
        )
        for _, r in sub.iterrows():
            # A white box keeps the label readable where it falls on an error bar.
            ax.annotate(
                f"β={r['beta']:g}",
                (r["kl"], r["recon"]),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=8,
                bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85),
                zorder=5,
            )
        ax.set_xlabel("rate: KL (nats)")
        ax.set_ylabel("distortion: reconstruction (nats)")
        ax.set_title(f"{ds} (latent_dim {int(sub['latent_dim'].iloc[0])})")
    fig.tight_layout()
    return fig


def dataset_comparison(table, metric: str = "bpd_elbo", ylabel: str = "negative ELBO (bits/dim)"):
    """The same model on both datasets side by side, per dimension so they compare; error bars = 95 % CI."""
    pivot = table.pivot(index="latent_dim", columns="dataset", values=metric)
    err = table.pivot(index="latent_dim", columns="dataset", values=f"{metric}_ci") if f"{metric}_ci" in table else None
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(pivot), 3.0))
    width = 0.8 / max(1, len(pivot.columns))
    x = np.arange(len(pivot))
    for i, ds in enumerate(pivot.columns):
        ax.bar(
            x + i * width - 0.4 + width / 2,
            pivot[ds],
            width,
            yerr=None if err is None else np.nan_to_num(err[ds]),
            label=ds,
            color=DATASET_COLORS.get(ds),
            capsize=2,
        )
    ax.set_xticks(x, [str(k) for k in pivot.index])
    ax.set_xlabel("latent_dim")
    ax.set_ylabel(ylabel)
    ax.set_title("Dataset complexity: the same VAE on both datasets")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def class_histograms(histograms: dict[str, list[float]], classes: list[str], title: str = ""):
    """Share of generated samples the reference classifier assigns to each class, one bar group per sampler,
    against the uniform share that the balanced training set implies."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(classes) + 1.5), 2.8))
    width = 0.8 / max(len(histograms), 1)
    x = np.arange(len(classes))
    for i, (name, shares) in enumerate(histograms.items()):
        ax.bar(x + (i - (len(histograms) - 1) / 2) * width, shares, width, label=name)
    ax.axhline(1 / len(classes), color="k", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylabel("share of samples")
    ax.set_title(title)
    # Outside the axes: a tall bar can reach any corner, and the legend must never hide one.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def bpd_vs_time(curves: dict[str, list[tuple[float, float]]], title: str = ""):
    """Validation bits/dim against cumulative training seconds, one line per run (label -> [(seconds, bpd)])."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(curves.items()):
        if pts:
            t, v = zip(*pts)
            ax.plot(np.asarray(t) / 60.0, v, marker=".", label=label)
    ax.set_xlabel("training time (minutes)")
    ax.set_ylabel("validation negative ELBO (bits/dim)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def kl_per_group_bars(kl_per_group: dict[str, list[float]], title: str = ""):
    """KL (nats) each latent group carries, top group first, one bar set per run."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / max(len(kl_per_group), 1)
    for i, (label, kls) in enumerate(sorted(kl_per_group.items())):
        ax.bar(np.arange(len(kls)) + i * width, kls, width, label=label)
    ax.set_xlabel("latent group (top = 0, finest resolution last)")
    ax.set_ylabel("KL (nats per image)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def recon_vs_disentanglement(rows, metrics: list[str]):
    """Reconstruction (nats) against each disentanglement score, one point per run, a colour per objective and a
    marker size growing with the objective's main weight (rows carry 'objective' and 'weight')."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes[0], metrics):
        for i, (obj, sub) in enumerate(rows.groupby("objective")):
            rank = sub["weight"].rank(method="dense")
            ax.scatter(
                sub[m], sub["recon"], s=12 + 18 * rank, color=colors(i), alpha=0.75, label=obj, edgecolors="none"
            )
        ax.set_xlabel(m.replace("_", " "))
        ax.set_ylabel("reconstruction (nats)")
        ax.set_title(f"reconstruction vs {m.replace('_', ' ')}")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


VERDICT_COLOURS = {
    "holds": "#16a34a",
    "partly holds": "#d97706",
    "no effect (negligible)": "#2563eb",
    "does not hold": "#dc2626",
}


def forest(points: list[dict], title: str = ""):
    """Each effect with its 95 % interval, in units of its smallest effect of interest δ and signed so that the
    claimed direction is positive: the band [-1, 1] is 'no effect', right of 1 an effect as claimed."""
    n = max(len(points), 1)
    fig, ax = plt.subplots(figsize=(10, 0.3 * n + 1.2))
    ax.axvspan(-1, 1, color="#dbeafe", zorder=0, label="±δ (negligible)")
    ax.axvline(0, color="#6b7280", lw=0.8)
    for i, p in enumerate(points):
        c = VERDICT_COLOURS.get(p["verdict"], "#6b7280")
        ax.plot([p["lo"], p["hi"]], [i, i], color=c, lw=2)
        ax.plot([p["estimate"]], [i], "o", color=c, ms=4)
    ax.set_yticks(range(len(points)), [p["label"][:95] for p in points], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("effect / δ (symmetric log scale; positive = as claimed)")
    ax.set_title(title or "Effects against their smallest effect of interest", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig

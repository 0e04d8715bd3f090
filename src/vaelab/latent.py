"""Latent-space tools: encode a split, interpolate (linear and spherical), traverse dimensions, the 2-D manifold."""

from __future__ import annotations

import numpy as np
import torch

from . import data as vdata
from .models import VAE


@torch.no_grad()
def encode_split(model: VAE, split: vdata.Split, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of every image in a split."""
    model.eval()
    mus, logvars = [], []
    for idx in vdata.minibatches(len(split), batch_size, device=split.x.device, shuffle=False):
        mu, logvar = model.encode(split.x[idx], split.y[idx] if model.num_classes else None)
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for Gaussian latents): keeps the norm typical of N(0, I)."""
    t = torch.linspace(0, 1, steps, device=z0.device)[:, None]
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
        out[i * len(values):(i + 1) * len(values), d] = values
    return out


def manifold_grid(n: int, device="cpu") -> torch.Tensor:
    """An n x n grid over the latent plane at Gaussian quantiles (Kingma & Welling 2014, fig. 4), row-major, z2 down."""
    from scipy.stats import norm

    q = torch.tensor(norm.ppf(np.linspace(0.05, 0.95, n)), dtype=torch.float32, device=device)
    z2, z1 = torch.meshgrid(q.flip(0), q, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], 1)


# ---------------------------------------------------------------- cached encodings of a run's splits

def encode_run(run_dir, split: str = "test", data_dir=None, n: int = 0, dataset: vdata.Dataset | None = None):
    """Posterior means/log-variances and labels of a split, cached in RUN/latents-<split>[-n].npz.

    The train split is the run's own training images (validation excluded); `n` > 0 takes a fixed subset.
    """
    from pathlib import Path

    from .run import Run
    from .store import CHECKPOINT, atomic_write_bytes

    run_dir = Path(run_dir)
    path = run_dir / f"latents-{split}{f'-{n}' if n else ''}.npz"
    ckpt_mtime = (run_dir / CHECKPOINT).stat().st_mtime_ns
    if path.is_file():
        with np.load(path) as z:
            if int(z["ckpt_mtime"]) == ckpt_mtime:  # a retrained model invalidates the cache
                return z["mu"], z["logvar"], z["y"]
    cfg, model, _ = Run(run_dir).load()
    ds = dataset if dataset is not None else vdata.load(cfg.dataset, data_dir)
    if split == "test":
        idx = vdata.test_indices(len(ds.x_test), n)
        x, y = ds.x_test[idx], ds.y_test[idx]
    elif split == "train":
        idx, _ = vdata.split_indices(len(ds.x_train), cfg.val_size, cfg.train_size)
        idx = vdata.subsample(idx, n)
        x, y = ds.x_train[idx], ds.y_train[idx]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    mu, logvar = encode_split(model, vdata.to_split(x, y, "cpu"))
    import io

    buf = io.BytesIO()
    np.savez(buf, mu=mu.numpy(), logvar=logvar.numpy(), y=y, ckpt_mtime=ckpt_mtime)
    atomic_write_bytes(path, buf.getvalue())
    return mu.numpy(), logvar.numpy(), y


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


def linear_probe(a_train: np.ndarray, y_train: np.ndarray):
    """The probe every organisation measure uses: standardised features, then logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(a_train, y_train)


def organisation(mu_train: np.ndarray, y_train: np.ndarray, mu_test: np.ndarray, y_test: np.ndarray,
                 k: int = 5, seed: int = 0) -> dict:
    """How well the latent space separates classes: linear probe, k-NN, silhouette; with chance levels."""
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    probe = linear_probe(mu_train, y_train)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(mu_train))).fit(mu_train, y_train)
    counts = np.bincount(y_test)
    n_labels = len(np.unique(y_test))
    sil = float(silhouette_score(mu_test, y_test, sample_size=min(5000, len(mu_test)), random_state=seed)) \
        if 1 < n_labels < len(mu_test) else float("nan")
    return {"probe_accuracy": float(probe.score(mu_test, y_test)), "knn_accuracy": float(knn.score(mu_test, y_test)),
            "knn_k": int(knn.n_neighbors), "silhouette": sil,
            "chance_accuracy": float(counts.max() / counts.sum()),  # always guessing the most frequent class
            "chance_silhouette": 0.0}  # random labels give ~0


def probe_baselines(untrained: VAE, probe: vdata.Split, test: vdata.Split, seed: int = 0) -> dict:
    """What the same linear probe reaches without training: on an untrained encoder of the same architecture
    (evaluate passes the run's own initial weights, rebuilt from its seed, so trained and untrained pair up) and
    on raw pixels reduced by PCA to latent_dim. A finding that training organised the codes by class must beat
    these, not only chance: random conv features already separate classes well."""
    from sklearn.decomposition import PCA

    def probe_acc(a_train, a_test) -> float:
        return float(linear_probe(a_train, probe.y.cpu().numpy()).score(a_test, test.y.cpu().numpy()))

    codes = [encode_split(untrained, s)[0].double().cpu().numpy() for s in (probe, test)]
    pix_tr, pix_te = (s.x.flatten(1).double().cpu().numpy() / 255.0 for s in (probe, test))
    pca = PCA(n_components=min(untrained.latent_dim, *pix_tr.shape), random_state=seed).fit(pix_tr)
    return {"probe_accuracy_untrained": probe_acc(*codes),
            "probe_accuracy_pca": probe_acc(pca.transform(pix_tr), pca.transform(pix_te))}


# ---------------------------------------------------------------- `vaelab explore`

NN_POOL = 60_000  # training images searched for each GMM sample's nearest neighbour


@torch.no_grad()
def explore(run_dir, data_dir=None, out_dir=None) -> tuple[list[tuple[str, str]], dict]:
    """Figures of latent exploration and conditional generation into RUN/explore/; returns (files, measures)."""
    from pathlib import Path

    from . import plots
    from .generate import Sampler, decode_mean, nearest_neighbours
    from .run import Run

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

    def dec(z, y=None):
        return decode_mean(model, torch.as_tensor(np.asarray(z), dtype=torch.float32), y)

    centroids = class_centroids(mu_tr, y_tr, len(classes))
    if not model.num_classes:  # attribute vectors only mean something in an unconditional code
        rows, labels = [], []
        alphas = np.linspace(0, 1.5, 7)
        for src, dst in vdata.spec(cfg.dataset).attribute_pairs:
            s, t = classes.index(src), classes.index(dst)
            vec = attribute_vector(centroids, s, t)
            first = int(np.flatnonzero(y_te == s)[0])
            rows.append(dec(arithmetic(mu_te[first], vec, alphas)))
            labels.append(f"{src} + α·({dst} − {src})")
        if rows:
            save(plots.image_rows(rows, labels, col_labels=[f"α={a:g}" for a in alphas]), "attribute_arithmetic.png",
                 "Latent arithmetic: a test image plus α times the centroid difference between two classes.")
    rows = []
    gen = Sampler(model, lambda: (mu_tr, y_tr), n_classes=len(classes))
    for k in range(len(classes)):
        rows.append(gen.images(8, "prior" if model.num_classes else "class-gaussian", k, seed=k))
    save(plots.image_rows(rows, [c[:12] for c in classes]), "class_conditional.png",
         "Class-conditional samples: " + ("the CVAE decoder given each label." if model.num_classes else
                                          "a full-covariance Gaussian fitted to each class's codes, decoded."))
    if not model.num_classes:
        prior, mixture = gen.images(10, "prior"), gen.images(10, "gmm")
        # the images the run trained on, at most NN_POOL of them (shapes2d's 663,552 would be 11 GB as floats)
        pool, _ = vdata.split_indices(len(ds.x_train), cfg.val_size, cfg.train_size)
        pool = vdata.subsample(pool, NN_POOL)
        train_x = np.asarray(ds.x_train[pool])
        nn_idx = nearest_neighbours((mixture.numpy() * 255), train_x.astype(np.float32))
        save(plots.image_rows([prior, mixture, torch.from_numpy(train_x[nn_idx])],
                              [f"z ~ p(z) ({cfg.prior})", "z ~ GMM", "nearest train"]), "prior_vs_mixture.png",
             "Samples from the model's prior p(z) vs from a 10-component GMM fitted to the aggregate posterior (Ghosh et al. 2020), "
             "with each GMM sample's nearest training image (pixel L2) — a memorisation check.")
    return figs, measures

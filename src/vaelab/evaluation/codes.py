"""A run's codes and how they are organised: posterior means of a split (cached per run), and the class-structure
measures evaluation reports beside their baselines (linear probe, k-NN, silhouette; untrained encoder, PCA)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vaelab import data as vdata
from vaelab.core.store import atomic_write_bytes
from vaelab.models import VAE
from vaelab.runs.run import Run


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


# ---------------------------------------------------------------- cached encodings of a run's splits


def encode_run(run_dir, split: str = "test", data_dir=None, n: int = 0, dataset: vdata.Dataset | None = None):
    """Posterior means/log-variances and labels of a split, cached in RUN/latents-<split>[-n].npz.

    The train split is the run's own training images (validation excluded); `n` > 0 takes a fixed subset.
    """

    run_dir = Path(run_dir)
    path = run_dir / f"latents-{split}{f'-{n}' if n else ''}.npz"
    ckpt_mtime = Run(run_dir).checkpoint_path.stat().st_mtime_ns
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

    buf = io.BytesIO()
    np.savez(buf, mu=mu.numpy(), logvar=logvar.numpy(), y=y, ckpt_mtime=ckpt_mtime)
    atomic_write_bytes(path, buf.getvalue())
    return mu.numpy(), logvar.numpy(), y


def linear_probe(a_train: np.ndarray, y_train: np.ndarray):
    """The probe every organisation measure uses: standardised features, then logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(a_train, y_train)


def organisation(
    mu_train: np.ndarray, y_train: np.ndarray, mu_test: np.ndarray, y_test: np.ndarray, k: int = 5, seed: int = 0
) -> dict:
    """How well the latent space separates classes: linear probe, k-NN, silhouette; with chance levels."""
    probe = linear_probe(mu_train, y_train)
    knn = KNeighborsClassifier(n_neighbors=min(k, len(mu_train))).fit(mu_train, y_train)
    counts = np.bincount(y_test)
    n_labels = len(np.unique(y_test))
    sil = (
        float(silhouette_score(mu_test, y_test, sample_size=min(5000, len(mu_test)), random_state=seed))
        if 1 < n_labels < len(mu_test)
        else float("nan")
    )
    return {
        "probe_accuracy": float(probe.score(mu_test, y_test)),
        "knn_accuracy": float(knn.score(mu_test, y_test)),
        "knn_k": int(knn.n_neighbors),
        "silhouette": sil,
        "chance_accuracy": float(counts.max() / counts.sum()),  # always guessing the most frequent class
        "chance_silhouette": 0.0,
    }  # random labels give ~0


def probe_baselines(untrained: VAE, probe: vdata.Split, test: vdata.Split, seed: int = 0) -> dict:
    """What the same linear probe reaches without training: on an untrained encoder of the same architecture
    (evaluate passes the run's own initial weights, rebuilt from its seed, so trained and untrained pair up) and
    on raw pixels reduced by PCA to latent_dim. A finding that training organised the codes by class must beat
    these, not only chance: random conv features already separate classes well."""

    def probe_acc(a_train, a_test) -> float:
        return float(linear_probe(a_train, probe.y.cpu().numpy()).score(a_test, test.y.cpu().numpy()))

    codes = [encode_split(untrained, s)[0].double().cpu().numpy() for s in (probe, test)]
    pix_tr, pix_te = (s.x.flatten(1).double().cpu().numpy() / 255.0 for s in (probe, test))
    pca = PCA(n_components=min(untrained.latent_dim, *pix_tr.shape), random_state=seed).fit(pix_tr)
    return {
        "probe_accuracy_untrained": probe_acc(*codes),
        "probe_accuracy_pca": probe_acc(pca.transform(pix_tr), pca.transform(pix_te)),
    }

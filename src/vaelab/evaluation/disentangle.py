"""Disentanglement metrics on a factor dataset: BetaVAE, FactorVAE, MIG, SAP and DCI scores of a code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score
from sklearn.tree import DecisionTreeClassifier

# A representation maps uint8 images (N, C, H, W) to codes (N, D): vaelab uses the posterior mean, as
# disentanglement_lib does.
Represent = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Sizes:
    """Sample sizes. disentanglement_lib's (Locatello et al. 2019) are BetaVAE 10,000/5,000 points of 64 pairs,
    FactorVAE 10,000/5,000 votes of 64 and 10,000-15,000 codes for MIG, SAP and DCI: about 2.9 M encodings, hours
    of a CPU core. vaelab's defaults are about 73,000 encodings (about 20 s of one core for the conv4 encoder);
    the estimates keep the papers' batch sizes and estimators, with wider sampling error."""

    batch: int = 64  # images per BetaVAE point (pairs) and per FactorVAE vote (Higgins et al.: L = 64)
    beta_train: int = 200
    beta_eval: int = 100
    factor_train: int = 300
    factor_eval: int = 150
    variance: int = 3000  # codes for FactorVAE's global scale and its active dimensions
    codes: int = 3000  # codes for MIG, SAP and DCI (split 2:1 into training and test for SAP and DCI)
    bins: int = 20  # MIG's histogram bins (Chen et al. 2018 / disentanglement_lib)


def _factor_batches(grid, n: int, batch: int, rng: np.random.Generator, pairs: bool):
    """n groups: each fixes one random factor k at one random value across `batch` images (BetaVAE: `batch` pairs
    that share the value; FactorVAE: `batch` images that share it). Returns (factors per image, k per group)."""
    k = rng.integers(0, len(grid.sizes), n)
    m = batch * (2 if pairs else 1)
    f = grid.sample_factors(n * m, rng).reshape(n, m, -1)
    if pairs:
        f[:, batch:, :][np.arange(n), :, k] = f[:, :batch, :][np.arange(n), :, k]
    else:
        f[np.arange(n), :, k] = f[np.arange(n), :1, k]
    return f.reshape(n * m, -1), k


def _codes(represent: Represent, grid, factors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    return np.concatenate([represent(grid.images(factors[i : i + chunk])) for i in range(0, len(factors), chunk)])


def beta_vae_score(represent: Represent, grid, sizes: Sizes, rng: np.random.Generator) -> float:
    """Higgins et al. (2017), section 3: a linear classifier names the fixed factor from the mean absolute
    difference of the codes of `batch` pairs that share it; the score is its test accuracy (chance 1/K)."""

    def points(n):
        f, k = _factor_batches(grid, n, sizes.batch, rng, pairs=True)
        z = _codes(represent, grid, f).reshape(n, 2, sizes.batch, -1)
        return np.abs(z[:, 0] - z[:, 1]).mean(1), k

    x_tr, k_tr = points(sizes.beta_train)
    x_te, k_te = points(sizes.beta_eval)
    clf = LogisticRegression(max_iter=2000).fit(x_tr, k_tr)
    return float(clf.score(x_te, k_te))


def factor_vae_score(represent: Represent, grid, sizes: Sizes, rng: np.random.Generator) -> float:
    """Kim & Mnih (2018), section 4: codes scaled by their global standard deviation; in a batch that fixes one
    factor, the dimension of least variance votes for that factor; a majority-vote classifier (dimension ->
    factor) is scored on held-out votes. Dimensions of global variance below 0.05 are left out, as in
    disentanglement_lib; with none active the score is 0."""
    z_all = _codes(represent, grid, grid.sample_factors(sizes.variance, rng))
    scale = z_all.std(0)
    active = z_all.var(0) >= 0.05
    if not active.any():
        return 0.0

    def votes(n):
        f, k = _factor_batches(grid, n, sizes.batch, rng, pairs=False)
        z = _codes(represent, grid, f).reshape(n, sizes.batch, -1) / np.where(scale > 0, scale, 1.0)
        var = z.var(1)
        var[:, ~active] = np.inf
        return var.argmin(1), k

    d_tr, k_tr = votes(sizes.factor_train)
    d_te, k_te = votes(sizes.factor_eval)
    counts = np.zeros((z_all.shape[1], len(grid.sizes)), np.int64)
    np.add.at(counts, (d_tr, k_tr), 1)
    return float((counts.argmax(1)[d_te] == k_te).mean())


def _discretize(z: np.ndarray, bins: int) -> np.ndarray:
    """Each dimension into `bins` equal-width bins over its range (disentanglement_lib's histogram_discretize)."""
    out = np.zeros(z.shape, np.int64)
    for i in range(z.shape[1]):
        out[:, i] = np.digitize(z[:, i], np.histogram(z[:, i], bins)[1][:-1])
    return out


def mutual_info_matrix(z: np.ndarray, factors: np.ndarray, bins: int) -> np.ndarray:
    """I(z_i; v_k) in nats, (D, K), from the discretized code."""
    zd = _discretize(z, bins)
    return np.array(
        [[mutual_info_score(factors[:, k], zd[:, i]) for k in range(factors.shape[1])] for i in range(z.shape[1])]
    )


def mig(z: np.ndarray, factors: np.ndarray, bins: int = 20, mi: np.ndarray | None = None) -> float:
    """Mutual information gap (Chen et al. 2018, eq. 6): per factor, the gap between the two code dimensions most
    informative about it, over the factor's entropy; averaged over factors. 1 for a code that copies each factor
    into one dimension (with at most `bins` values), 0 when no dimension stands out. `mi`: the
    mutual_info_matrix of z and factors, when the caller has it already."""
    if z.shape[1] < 2:
        return 0.0
    m = np.sort(mutual_info_matrix(z, factors, bins) if mi is None else mi, axis=0)[::-1]
    h = np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    keep = h > 0
    return float(np.mean((m[0, keep] - m[1, keep]) / h[keep]))


def sap(z_tr, f_tr, z_te, f_te) -> float:
    """Separated attribute predictability (Kumar et al. 2018, section 4): per factor, the gap between the two code
    dimensions that best predict it alone; averaged over factors. Discrete factors: test accuracy of a threshold
    classifier on the one dimension (a depth-limited decision tree: thresholds, as the paper's; disentanglement_lib
    uses a linear SVM, which cannot carve a many-valued factor out of one number)."""
    score = np.zeros((z_tr.shape[1], f_tr.shape[1]))
    for i in range(z_tr.shape[1]):
        for k in range(f_tr.shape[1]):
            n_values = int(f_tr[:, k].max()) + 1
            clf = DecisionTreeClassifier(max_leaf_nodes=max(2, 2 * n_values), random_state=0)
            clf.fit(z_tr[:, i : i + 1], f_tr[:, k])
            score[i, k] = clf.score(z_te[:, i : i + 1], f_te[:, k])
    if z_tr.shape[1] < 2:
        return 0.0
    top = np.sort(score, axis=0)[::-1]
    return float(np.mean(top[0] - top[1]))


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return h / np.log(base) if base > 1 else np.zeros(len(p))


def dci(z_tr, f_tr, z_te, f_te, seed: int = 0) -> dict[str, float]:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018, section 3): one random forest per
    factor (their paper's second regressor; disentanglement_lib uses gradient-boosted trees, ~50x the time here)
    gives the importance matrix R (D x K) and its test accuracy (informativeness). Disentanglement: 1 minus each
    dimension's entropy over factors (base K), weighted by its share of the importance; completeness: 1 minus each
    factor's entropy over dimensions (base D), weighted likewise."""
    d, k_n = z_tr.shape[1], f_tr.shape[1]
    r = np.zeros((d, k_n))
    acc = []
    for k in range(k_n):
        # every split weighs every dimension (max_features=None): with a random subset, splits on uninformative
        # dimensions would take importance from the one that carries the factor
        clf = RandomForestClassifier(
            n_estimators=30, min_samples_leaf=2, max_features=None, random_state=seed, n_jobs=1
        )
        clf.fit(z_tr, f_tr[:, k])
        r[:, k] = np.abs(clf.feature_importances_)
        acc.append(clf.score(z_te, f_te[:, k]))
    total = r.sum()
    if total <= 0:
        return {"dci_disentanglement": 0.0, "dci_completeness": 0.0, "dci_informativeness": float(np.mean(acc))}
    dis = float(np.sum((1 - _entropy_rows(r, k_n)) * r.sum(1) / total))
    comp = float(np.sum((1 - _entropy_rows(r.T, d)) * r.sum(0) / total))
    return {"dci_disentanglement": dis, "dci_completeness": comp, "dci_informativeness": float(np.mean(acc))}


METRICS = ("beta_vae", "factor_vae", "mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")


def scores(represent: Represent, grid, sizes: Sizes = Sizes(), seed: int = 0) -> dict[str, float]:
    """Every metric of one representation, each from its own seeded draw of factors (fixed seed: two models are
    scored on the same images). Also the factor each code dimension tells most about (`dim_factor`, by MIG's
    mutual information), for traversal figures."""
    out = {
        "beta_vae": beta_vae_score(represent, grid, sizes, np.random.default_rng([seed, 1])),
        "factor_vae": factor_vae_score(represent, grid, sizes, np.random.default_rng([seed, 2])),
    }
    f = grid.sample_factors(sizes.codes, np.random.default_rng([seed, 3]))
    z = _codes(represent, grid, f)
    mi = mutual_info_matrix(z, f, sizes.bins)  # once: MIG and each dimension's factor read it
    out["mig"] = mig(z, f, sizes.bins, mi)
    n_tr = 2 * len(z) // 3
    out["sap"] = sap(z[:n_tr], f[:n_tr], z[n_tr:], f[n_tr:])
    out.update(dci(z[:n_tr], f[:n_tr], z[n_tr:], f[n_tr:], seed))
    out["dim_factor"] = [grid.names[k] for k in mi.argmax(1)]
    out["dim_mi"] = [float(v) for v in mi.max(1)]
    return out


def model_scores(model, grid, sizes: Sizes = Sizes(), seed: int = 0, batch: int = 1024) -> dict[str, float]:
    """scores() of a trained VAE's posterior means."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def represent(x: np.ndarray) -> np.ndarray:
        out = [
            model.encode(torch.from_numpy(x[i : i + batch]).to(device))[0].float().cpu()
            for i in range(0, len(x), batch)
        ]
        return torch.cat(out).numpy()

    model.eval()
    return scores(represent, grid, sizes, seed)

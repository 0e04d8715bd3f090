"""Generation: latent codes from the model's prior, a GMM on the aggregate posterior or a class's Gaussian, decoded
into images with the labels a conditional VAE needs. `vaelab sample`, the report, the scorer, `explore` and the
notebook all draw through `Sampler`, so each way of sampling is written once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.evaluation.codes import encode_run
from vaelab.runs.run import Run

SAMPLERS = ("prior", "gmm", "class-gaussian")


class ClassGaussians:
    """Class-conditional generation without retraining: a full-covariance Gaussian per class's latent codes."""

    def __init__(self, mu: np.ndarray, y: np.ndarray, n_classes: int, ridge: float = 1e-4):
        self.means, self.covs = [], []
        for k in range(n_classes):
            zk = mu[y == k]
            if len(zk) < 2:
                raise ValueError(f"class {k} has {len(zk)} codes; need at least 2 to fit a Gaussian")
            cov = np.cov(zk, rowvar=False).reshape(mu.shape[1], mu.shape[1])
            self.means.append(zk.mean(0))
            self.covs.append(cov + ridge * np.eye(mu.shape[1]))  # ridge keeps it positive definite

    def sample(self, k: int, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).multivariate_normal(self.means[k], self.covs[k], size=n)


def fit_mixture(mu: np.ndarray, n_components: int = 10, seed: int = 0):
    """Ex-post density estimation (Ghosh et al. 2020): a GMM on the aggregate posterior, sampled instead of p(z)."""
    return GaussianMixture(
        n_components=min(n_components, len(mu)), covariance_type="full", reg_covar=1e-4, random_state=seed
    ).fit(np.asarray(mu, dtype=np.float64))  # float32 covariances fail the PSD check


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Index of each query's nearest pool item in pixel space (L2): the memorisation check for samples."""
    q = torch.from_numpy(queries.reshape(len(queries), -1).astype(np.float32))
    p = torch.from_numpy(pool.reshape(len(pool), -1).astype(np.float32))
    return torch.cdist(q, p).argmin(1).numpy()


@torch.no_grad()
def decode_mean(model, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Codes -> the likelihood's mean image in [0, 1]."""
    return model.likelihood.mean(model.decode(z, y).float())


class Sampler:
    """One model's ways to generate. `codes` draws latent codes from the model's prior p(z), from a GMM fitted to the
    aggregate posterior, or from a class's Gaussian; `images` decodes them (the likelihood's mean, or a draw from it).
    The fits are made once, on first use, from the training codes `train_codes()` returns (mu, y)."""

    def __init__(
        self,
        model,
        train_codes: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
        n_classes: int | None = None,
        fit_seed: int = 0,
    ):
        self.model, self._train_codes, self.n_classes, self.fit_seed = model, train_codes, n_classes, fit_seed
        self._gmm = self._per_class = None

    @classmethod
    def for_run(cls, run_dir, model=None, data_dir=None, dataset: vdata.Dataset | None = None) -> Sampler:
        """A run's sampler; the fits read up to 10,000 of its training codes (cached in the run directory)."""
        if model is None:
            model = Run(run_dir).load()[1]

        def train_codes():
            mu, _, y = encode_run(Path(run_dir), "train", data_dir, n=10000, dataset=dataset)
            return mu, y

        return cls(model, train_codes, n_classes=model.num_classes or None)

    def _fitted_codes(self):
        if self._train_codes is None:
            raise VaelabError("this sampler has no training codes to fit; only the prior sampler works")
        return self._train_codes()

    def codes(self, n: int, sampler: str = "prior", class_index: int | None = None, seed: int = 0) -> np.ndarray:
        """(n, latent_dim) codes; the same seed gives the same codes."""
        if sampler == "prior":
            with torch.no_grad():
                return self.model.prior.sample(n, torch.Generator().manual_seed(seed)).cpu().numpy()
        if sampler == "gmm":
            if self._gmm is None:
                self._gmm = fit_mixture(self._fitted_codes()[0], seed=self.fit_seed)
            self._gmm.set_params(random_state=seed)  # the fit is fixed; only the draw depends on seed
            return self._gmm.sample(n)[0]
        if sampler == "class-gaussian":
            if class_index is None:
                raise VaelabError("the class-gaussian sampler needs a class (--class NAME)")
            if self._per_class is None:
                mu, y = self._fitted_codes()
                self._per_class = ClassGaussians(mu, y, self.n_classes or int(y.max()) + 1)
            return self._per_class.sample(class_index, n, seed)
        raise VaelabError(f"unknown sampler {sampler!r} (known: {', '.join(SAMPLERS)})")

    def labels(self, n: int, class_index: int | None = None) -> torch.Tensor | None:
        """What a conditional VAE's decoder is given: the class asked for, else every class in turn; None for an
        unconditional model."""
        if not self.model.num_classes:
            return None
        return torch.full((n,), class_index) if class_index is not None else torch.arange(n) % self.model.num_classes

    @torch.no_grad()
    def images(
        self, n: int, sampler: str = "prior", class_index: int | None = None, seed: int = 0, stochastic: bool = False
    ) -> torch.Tensor:
        """n decoded samples in [0, 1], on the model's device. A class needs a conditional model (its decoder takes
        the label) or the class-gaussian sampler (the class's region of an unconditional code)."""
        if class_index is not None and not self.model.num_classes and sampler != "class-gaussian":
            raise VaelabError("a class needs a conditional run (--conditional) or the class-gaussian sampler")
        device = next(self.model.parameters()).device
        z = torch.as_tensor(self.codes(n, sampler, class_index, seed), dtype=torch.float32, device=device)
        y = self.labels(n, class_index)
        params = self.model.decode(z, None if y is None else y.to(device)).float()
        return self.model.likelihood.sample(params) if stochastic else self.model.likelihood.mean(params)

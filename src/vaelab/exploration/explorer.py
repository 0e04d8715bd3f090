"""A latent space to move through by hand: what `vaelab serve` answers, with no HTTP in it.

`Explorer` holds one model and (when its dataset is at hand) a fixed set of test images with their codes. It orders
the latent dimensions by KL (Burda et al. 2016's active units first), labels each with the generating factor it
tells most about on factor datasets (the mutual information of disentangle.mutual_info_matrix), places the test codes
on a 2-D map (PCA), and turns requests into codes and images: a test image's code, a draw from the prior or from
the GMM on the aggregate posterior, a class's Gaussian, interpolation (linear or spherical), latent arithmetic
(A + (B - C) between class centroids) and traversals. Every request is validated here; a bad one raises BadRequest
with one line, which the server answers as HTTP 400.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import torch
from sklearn.decomposition import PCA

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.evaluation.codes import encode_split
from vaelab.evaluation.disentangle import mutual_info_matrix
from vaelab.evaluation.evaluate import AU_THRESHOLD, active_units
from vaelab.evaluation.generate import Sampler, decode_mean
from vaelab.exploration.latent import class_centroids, lerp, slerp
from vaelab.models.losses import kl_per_dim
from vaelab.runs.run import Run

MAX_BATCH = 64  # codes one request may decode
Z_LIMIT = 100.0  # |z_i| beyond this is no code a Gaussian prior or posterior produces: refused
N_TEST = 2000  # test images the explorer encodes (the map, "reset to a test image", the class centroids)


class BadRequest(VaelabError):
    """A request the explorer refuses, with the reason in one line."""


def _number(value, name: str, lo: float, hi: float) -> float:
    # an int is compared exactly, never converted first: a 400-digit integer overflows a float
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (isinstance(value, int) or math.isfinite(value))
    ):
        raise BadRequest(f"{name} must be a finite number, got {_short(value)}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo:g}, {hi:g}], got {_short(value)}")
    return float(value)


def _short(value) -> str:
    """A request's value for a message: its repr, cut to 40 characters (a 400-digit integer, a long string)."""
    text = (
        repr(value)
        if not isinstance(value, int) or abs(value) < 10**30
        else f"an integer of {len(str(abs(value)))} digits"
    )
    return text if len(text) <= 40 else text[:37] + "..."


def _index(value, name: str, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {_short(value)}")
    if not 0 <= value < n:
        raise BadRequest(f"{name} {_short(value)} is out of range (0..{n - 1})")
    return value


class Explorer:
    """One model's latent space, ready for requests. Thread-safe: model calls are serialised by a lock."""

    def __init__(self, model, classes, dataset: vdata.Dataset | None = None, sampler: Sampler | None = None):
        self.model, self.classes = model.eval(), list(classes)
        self.latent_dim = int(model.latent_dim)
        self.hierarchical = hasattr(model, "temperature")
        self.sampler = sampler or Sampler(model, n_classes=model.num_classes or None)
        self._lock = threading.Lock()
        self._device = next(model.parameters()).device
        self.x_test = self.y_test = self.mu = None
        self.kl = np.full(self.latent_dim, np.nan)
        self.active = np.zeros(self.latent_dim, bool)
        self._info: dict | None = None
        self.labels: list[str] = [""] * self.latent_dim
        if dataset is not None:
            self._encode_test(dataset)

    @classmethod
    def for_run(cls, run_dir, data_dir=None) -> Explorer:
        """A run's explorer; without its dataset (e.g. an exported model on another machine) it still decodes
        codes and samples the prior, and says which features are off."""
        cfg, model, ckpt = Run(run_dir).load()
        try:
            ds = vdata.load(cfg.dataset, data_dir)
        except VaelabError:
            ds = None
        sampler = Sampler.for_run(run_dir, model, data_dir, dataset=ds) if ds is not None else None
        return cls(model, ckpt["classes"], ds, sampler)

    def _encode_test(self, ds: vdata.Dataset) -> None:
        idx = vdata.test_indices(len(ds.x_test), min(N_TEST, len(ds.x_test)))
        self.x_test, self.y_test = np.asarray(ds.x_test[idx]), np.asarray(ds.y_test[idx])
        mu, logvar = encode_split(self.model, vdata.to_split(self.x_test, self.y_test, self._device))
        mu, logvar = mu.float().cpu(), logvar.float().cpu()
        self.kl = kl_per_dim(mu, logvar).mean(0).numpy()  # KL(q(z_i|x) || N(0, 1)), averaged over the images
        self.active = (active_units(mu)[1] > AU_THRESHOLD).numpy()  # what eval.json counts as active units
        self.mu = mu.numpy()
        if ds.factors_test is not None:
            mi = mutual_info_matrix(self.mu, np.asarray(ds.factors_test[idx]), bins=20)
            self.labels = [ds.factor_names[int(row.argmax())] if row.max() > 0.05 else "" for row in mi]

    # ---------------------------------------------------------------- what the page needs once

    def info(self) -> dict:
        """Made once: the test codes it describes never change."""
        if self._info is None:
            self._info = self._make_info()
        return self._info

    def _make_info(self) -> dict:
        have = self.mu is not None
        order = np.argsort(-np.nan_to_num(self.kl, nan=0.0), kind="stable") if have else np.arange(self.latent_dim)
        dims = [self._dim(int(i)) for i in order]
        return {
            "latent_dim": self.latent_dim,
            "dims": dims,
            "classes": self.classes,
            "conditional": bool(self.model.num_classes),
            "hierarchical": self.hierarchical,
            "n_test": 0 if not have else len(self.mu),
            "map": self._map() if have else [],
            "gmm": have,
            "max_batch": MAX_BATCH,
        }

    def _dim(self, i: int) -> dict:
        if self.mu is None:
            return {"index": i, "kl": None, "active": None, "label": "", "lo": -3.0, "hi": 3.0}
        lo = min(-3.0, float(np.quantile(self.mu[:, i], 0.005)))
        hi = max(3.0, float(np.quantile(self.mu[:, i], 0.995)))
        active = bool(self.active[i])
        return {"index": i, "kl": float(self.kl[i]), "active": active, "label": self.labels[i], "lo": lo, "hi": hi}

    def _map(self) -> list[list[float]]:
        """The test codes in 2-D (the code itself when it is 2-D, else its first two principal components), with
        each point's class: [x, y, class index]."""
        xy = self.mu if self.latent_dim == 2 else PCA(2, random_state=0).fit_transform(self.mu)
        return [[round(float(a), 4), round(float(b), 4), int(c)] for (a, b), c in zip(xy, self.y_test)]

    # ---------------------------------------------------------------- requests

    def codes(self, z) -> np.ndarray:
        """A code or a list of codes from a request -> (B, latent_dim) float32, validated."""
        if not isinstance(z, list) or not z:
            raise BadRequest("z must be a code (a list of numbers) or a list of codes")
        rows = z if isinstance(z[0], list) else [z]
        if len(rows) > MAX_BATCH:
            raise BadRequest(f"at most {MAX_BATCH} codes per request, got {len(rows)}")
        for r in rows:
            if not isinstance(r, list) or len(r) != self.latent_dim:
                raise BadRequest(f"each code needs {self.latent_dim} numbers (the latent size)")
            for i, v in enumerate(r):
                _number(v, f"z[{i}]", -Z_LIMIT, Z_LIMIT)
        return np.asarray(rows, np.float32)

    def class_index(self, name) -> int:
        if isinstance(name, int) and not isinstance(name, bool):
            return _index(name, "class", len(self.classes))
        if not isinstance(name, str) or name not in self.classes:
            raise BadRequest(f"unknown class {_short(name)} (known: {', '.join(self.classes)})")
        return self.classes.index(name)

    def decode(self, z, class_name=None, temperature: float = 0.0, seed: int = 0) -> np.ndarray:
        """Codes -> uint8 images (B, H, W, C). A conditional model decodes with the class given (the first if none);
        a hierarchical one draws its lower groups at `temperature` (0: their means), with `seed`."""
        codes = torch.from_numpy(self.codes(z)).to(self._device)
        t = _number(temperature, "temperature", 0.0, 2.0)
        y = None
        if class_name is not None and not self.model.num_classes:
            raise BadRequest("this model is unconditional: it decodes without a class (leave class out)")
        if self.model.num_classes:
            k = 0 if class_name is None else self.class_index(class_name)
            y = torch.full((len(codes),), k, device=self._device)
        with self._lock, torch.random.fork_rng(devices=[]):
            torch.manual_seed(_index(seed, "seed", 2**31))
            if self.hierarchical:
                self.model.temperature = t
            x = decode_mean(self.model, codes, y)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def _need_test(self) -> None:
        if self.mu is None:
            raise BadRequest("no test images: start vaelab serve with --data-dir where its dataset is")

    def code(self, index) -> list[float]:
        """The posterior mean code of test image `index`."""
        self._need_test()
        return self.mu[_index(index, "test image", len(self.mu))].tolist()

    def test_image(self, index) -> np.ndarray:
        self._need_test()
        return self.x_test[_index(index, "test image", len(self.x_test))].transpose(1, 2, 0)

    def random(self, source: str = "prior", seed: int = 0, class_name=None) -> list[float]:
        """A code from the prior, the GMM on the aggregate posterior ("gmm") or a class's Gaussian ("class")."""
        seed = _index(seed, "seed", 2**31)
        if source not in ("prior", "gmm", "class"):
            raise BadRequest(f"source must be prior, gmm or class, got {_short(source)}")
        if source == "prior":
            with self._lock:
                return self.sampler.codes(1, "prior", seed=seed)[0].tolist()
        k = self.class_index(class_name) if source == "class" else None
        if source == "class" and self.model.num_classes:  # the decoder takes the class: any prior code will do
            return self.random("prior", seed)
        self._need_test()
        with self._lock:
            return self.sampler.codes(1, "gmm" if k is None else "class-gaussian", k, seed)[0].tolist()

    def interpolate(self, a, b, t, mode: str = "linear") -> list[float]:
        """The code a fraction t of the way from test image a's code to b's, on a line or a great circle."""
        za, zb = torch.tensor(self.code(a)), torch.tensor(self.code(b))
        t = _number(t, "t", 0.0, 1.0)
        if mode not in ("linear", "spherical"):
            raise BadRequest(f"mode must be linear or spherical, got {_short(mode)}")
        return (slerp if mode == "spherical" else lerp)(za, zb, [t])[0].tolist()

    def arithmetic(self, a, b, c) -> list[float]:
        """centroid(A) + (centroid(B) - centroid(C)), the class centroids of the test codes (White 2016)."""
        self._need_test()
        ka, kb, kc = (self.class_index(v) for v in (a, b, c))
        centroids = class_centroids(self.mu, self.y_test, len(self.classes))
        z = centroids[ka] + centroids[kb] - centroids[kc]
        if not np.isfinite(z).all():
            raise BadRequest("a class has no test images to take its centroid from")
        return z.tolist()

    def traverse(self, z, dim, values) -> list[list[float]]:
        """Copies of one code with dimension `dim` set to each of `values`."""
        base = self.codes(z)
        if len(base) != 1:
            raise BadRequest("a traversal starts from one code")
        d = _index(dim, "dimension", self.latent_dim)
        if not isinstance(values, list) or not 0 < len(values) <= MAX_BATCH:
            raise BadRequest(f"values must be a list of 1 to {MAX_BATCH} numbers")
        out = np.repeat(base, len(values), 0)
        out[:, d] = [_number(v, "value", -Z_LIMIT, Z_LIMIT) for v in values]
        return out.tolist()

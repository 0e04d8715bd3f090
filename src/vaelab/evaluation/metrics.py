"""The metric registry: every number evaluation writes to eval.json and a study carries into results.csv, with what
the rest of vaelab needs to show it (unit, which way is better, format). `evaluate`, `study`, the CLI and the
report all read this one table, so a new metric is one entry (and its test):

    from vaelab.evaluation.metrics import Metric, register
    register(Metric("mean_pixel", "intensity", lower_is_better=None,
                    per_image=lambda model, x, y, terms: model.x_hat(terms["params"]).flatten(1).mean(1)))

A metric with `per_image` is computed by `evaluate` as the test-set mean of that function of the model, the images,
their labels and the model's named terms; the built-in ones (per_image None) are computed by `evaluate` itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vaelab.core.errors import VaelabError
from vaelab.evaluation.disentangle import METRICS as DISENTANGLEMENT


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str = ""  # nats, bits/dim, dB, share, ...; "" when it has none
    lower_is_better: bool | None = None  # None: no better direction (a count, a baseline, a size)
    fmt: str = ".4g"
    summary: bool = False  # in the one line `vaelab train` and `vaelab evaluate` print
    per_image: Callable | None = None  # (model, x, y, terms) -> (B,) values; None: built into evaluate
    description: str = ""

    def format(self, value) -> str:
        return format(value, self.fmt) if isinstance(value, float) else str(value)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add a metric (or replace one of the same name); it then reaches eval.json, results.csv, tables and reports."""
    if not metric.name.isidentifier():
        raise VaelabError(f"a metric's name must be an identifier, got {metric.name!r}")
    METRICS[metric.name] = metric
    return metric


for _m in (
    Metric("neg_elbo", "nats", True, summary=True, description="negative ELBO per image"),
    Metric("recon", "nats", True, summary=True, description="reconstruction term -log p(x|z)"),
    Metric("kl", "nats", None, summary=True, description="KL(q(z|x) || p(z)), the rate"),
    Metric("bpd_elbo", "bits/dim", True, summary=True, description="negative ELBO in bits per dimension"),
    Metric("iwae_nll", "nats", True, summary=True, description="IWAE bound on -log p(x)"),
    Metric("bpd_iwae", "bits/dim", True, summary=True, description="IWAE bound in bits per dimension"),
    Metric("active_units", "units", None, summary=True, description="latent dimensions with Cov_x E_q[z] > 0.01"),
    Metric("psnr", "dB", False, summary=True, description="mean per-image PSNR of the reconstructions"),
    Metric("ssim", "", False, summary=True, description="mean SSIM of the reconstructions"),
    Metric("probe_accuracy", "share", False, description="linear probe on the codes"),
    Metric("probe_accuracy_untrained", "share", None, description="the probe on the untrained encoder"),
    Metric("probe_accuracy_pca", "share", None, description="the probe on PCA of the pixels"),
    Metric("chance_accuracy", "share", None, description="the most frequent class's share"),
    Metric("knn_accuracy", "share", False, description="k-NN on the codes"),
    Metric("silhouette", "", False, description="silhouette of the test codes' classes"),
    Metric("conditional_accuracy", "share", False, description="class-conditional samples classified as asked"),
    Metric("fd_prior", "", True, description="Fréchet distance of prior samples, reference-classifier features"),
    Metric("fd_gmm", "", True, description="Fréchet distance of mixture samples, reference-classifier features"),
    Metric("n_params", "parameters", None, description="the model's parameters"),
    Metric("kl_share_finest", "share", None, description="hierarchical model: KL share of the finest groups"),
    *(Metric(m, "", False, description="disentanglement score") for m in DISENTANGLEMENT),
):
    register(_m)


def columns() -> list[str]:
    """Every registered metric's name, in registration order: the metric columns of results.csv."""
    return list(METRICS)


def summary_keys() -> list[str]:
    return [m.name for m in METRICS.values() if m.summary]


def computed() -> list[Metric]:
    """The metrics evaluate computes from their per_image function (the built-in ones it computes itself)."""
    return [m for m in METRICS.values() if m.per_image is not None]

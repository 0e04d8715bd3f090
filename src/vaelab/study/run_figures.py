"""The figures and page of one run's report: curves, reconstructions, samples, latent maps and traversals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vaelab import data as vdata
from vaelab.evaluation.generate import Sampler, decode_mean
from vaelab.evaluation.metrics import columns as metric_columns
from vaelab.evaluation.scoring import GENERATION_KEYS, SCORE_KEYS
from vaelab.exploration import latent, plots
from vaelab.runs.run import Run
from vaelab.study.page import N_MAP, Page, _write, metric_header


def _test_split(cfg, data_dir, n: int, device="cpu"):
    ds = vdata.load(cfg.dataset, data_dir)
    idx = vdata.test_indices(len(ds.x_test), min(n, len(ds.x_test)))
    return ds, vdata.to_split(ds.x_test[idx], ds.y_test[idx], device)


def _pick_pairs(y: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Pairs of test images from different classes, deterministic."""
    pairs, used = [], set()
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            if y[i] != y[j] and i not in used and j not in used:
                pairs.append((i, j))
                used |= {i, j}
                break
        if len(pairs) == n:
            break
    return pairs


@torch.no_grad()
def run_figures(
    run_dir: Path, fig_dir: Path, data_dir=None, prefix: str = "", only: set[str] | None = None
) -> list[tuple[str, str, str]]:
    """The figures of one run (all, or those named in `only`); returns (section, file, caption) triples."""
    f = _RunFigures(run_dir, fig_dir, data_dir, prefix, only)
    f.reconstructions_and_samples()
    f.curves_and_kl()
    f.latent_space()
    f.interpolations()
    f.traversals()
    return f.out


class _RunFigures:
    """One run's model, a fixed set of test images and their codes, and the figures made from them."""

    def __init__(self, run_dir: Path, fig_dir: Path, data_dir, prefix: str, only: set[str] | None):
        self.run_dir, self.fig_dir, self.prefix, self.only = run_dir, fig_dir, prefix, only
        self.cfg, self.model, _ = Run(run_dir).load()
        self.ds, self.split = _test_split(self.cfg, data_dir, N_MAP)
        self.y_np = self.split.y.numpy()
        self.yc = self.split.y if self.model.num_classes else None
        self.name = f"{self.cfg.dataset}, latent_dim {self.cfg.latent_dim}, β {self.cfg.beta:g}"
        self.ev = Run(run_dir).eval() or {}
        self.out: list[tuple[str, str, str]] = []

    def want(self, fname: str) -> bool:
        return self.only is None or fname in self.only

    def save(self, fig, fname: str, section: str, caption: str) -> None:
        plots.save_fig(fig, self.fig_dir / f"{self.prefix}{fname}")
        self.out.append((section, f"{self.prefix}{fname}", caption))

    def reconstructions_and_samples(self) -> None:
        model, x = self.model, self.split.x[:12]
        if self.want("reconstructions.png"):
            rows = [vdata.to_float(x), model.reconstruct(x, None if self.yc is None else self.yc[:12])]
            self.save(
                plots.image_rows(rows, ["original", "reconstruction"]),
                "reconstructions.png",
                "Reconstructions",
                f"Test images (top) and their reconstructions from the posterior mean (bottom) — {self.name}.",
            )
        if self.want("samples.png"):
            samples = Sampler(model).images(40, "prior", seed=0)
            self.save(
                plots.image_rows([samples[i * 10 : (i + 1) * 10] for i in range(4)], ["", "", "", ""]),
                "samples.png",
                "Samples",
                f"Decoded samples z ~ p(z), the {self.cfg.prior} prior (likelihood mean) — {self.name}.",
            )

    def curves_and_kl(self) -> None:
        hist = Run(self.run_dir).metrics  # [] before the first epoch
        if hist and self.want("curves.png"):
            self.save(plots.curves(hist, self.name), "curves.png", "Training", "Loss, reconstruction and KL per epoch.")
        if "kl_per_dim" in self.ev and self.want(
            "kl_per_dim.png"
        ):  # analytic KL only: a learned prior does not factorise
            self.save(
                plots.kl_per_dim_bars(self.ev["kl_per_dim"], self.ev["au_variance"]),
                "kl_per_dim.png",
                "Latent space",
                "KL per latent dimension, sorted; green units are active (Cov_x E_q[z_i] > 0.01).",
            )

    def latent_space(self) -> None:
        self.mu, _ = latent.encode_split(self.model, self.split)
        if self.want("latent_map.png"):
            self.save(
                plots.latent_maps(self.mu.numpy(), self.y_np, list(self.ds.classes)),
                "latent_map.png",
                "Latent space",
                f"Posterior means of {len(self.split)} test images, coloured by class.",
            )
        if self.cfg.latent_dim == 2 and not self.model.num_classes and self.want("manifold.png"):
            grid = decode_mean(self.model, latent.manifold_grid(12))
            self.save(
                plots.image_rows([grid[i * 12 : (i + 1) * 12] for i in range(12)], [""] * 12, cell=0.55),
                "manifold.png",
                "Latent space",
                "The decoded manifold over the latent plane (Gaussian quantiles 5%…95%).",
            )

    def interpolations(self) -> None:
        y_np, classes = self.y_np, self.ds.classes
        rows, labels = [], []
        for i, j in _pick_pairs(y_np, 3) if self.want("interpolations.png") else []:
            for kind, fn in (("linear", latent.lerp), ("spherical", latent.slerp)):
                yy = None if self.yc is None else torch.full((10,), int(y_np[i]))
                rows.append(decode_mean(self.model, fn(self.mu[i], self.mu[j], 10), yy))
                labels.append(f"{classes[y_np[i]][:10]}→{classes[y_np[j]][:10]}\n{kind}")
        if rows:
            self.save(
                plots.image_rows(rows, labels),
                "interpolations.png",
                "Latent space",
                "Interpolations between test images' posterior means: linear and spherical, each pair.",
            )

    def traversals(self) -> None:
        """The dimensions that carry most (highest KL, else most varying means), from -3 to 3; on a factor dataset
        every dimension (up to 10), each labelled with the factor it tells most about."""
        ev = self.ev
        if not ev or not self.want("traversals.png"):
            return
        dis = ev.get("disentanglement") or {}
        spread = np.asarray(ev.get("kl_per_dim") or ev["au_variance"])
        top = list(np.argsort(-spread)[: min(10 if dis else 6, self.cfg.latent_dim)])
        vals = torch.linspace(-3, 3, 9)
        z = latent.traverse(self.mu[0], [int(d) for d in top], vals)
        yy = None if self.yc is None else torch.full((len(z),), int(self.y_np[0]))
        imgs = decode_mean(self.model, z, yy)
        labels = [f"z{d}" + (f" {dis['dim_factor'][d]}\n(MI {dis['dim_mi'][d]:.2f})" if dis else "") for d in top]
        rows = [imgs[k * 9 : (k + 1) * 9] for k in range(len(top))]
        self.save(
            plots.image_rows(rows, labels, col_labels=[f"{v:g}" for v in vals.tolist()]),
            "traversals.png",
            "Latent space",
            "Traversals of the highest-KL (or, under a learned prior, most varying) dimensions "
            "from −3 to 3, others fixed"
            + ("; each labelled with the factor it tells most about (mutual information in nats)." if dis else "."),
        )


def analyze_run(run_dir: Path, data_dir=None, classifier: bool = True) -> Path:
    cfg = Run(run_dir).config.to_dict()
    rep = Run(run_dir).report_dir
    page = Page(f"vaelab run: {run_dir.name}")
    page.section("Setup")
    page.add("table", ["field", "value"], [[k, v] for k, v in cfg.items()])
    ev = Run(run_dir).eval()
    if ev is not None:
        keys = [k for k in metric_columns() + ["iwae_samples", "test_size"] if k in ev]
        page.section("Test metrics")
        page.add(
            "table",
            [metric_header(k) for k in keys],
            [[f"{ev[k]:.4g}" if isinstance(ev[k], float) else ev[k] for k in keys]],
        )
    current = None
    for section, fname, caption in run_figures(run_dir, rep / "fig", data_dir):
        if section != current:
            page.section(section)
            current = section
        page.add("fig", f"fig/{fname}", caption)
    figs, measures = latent.explore(run_dir, data_dir, out_dir=rep / "fig" / "explore")
    page.section("Latent-space organisation")
    page.add("table", list(measures), [[f"{v:.3g}" if isinstance(v, float) else v for v in measures.values()]])
    page.section("Conditional generation")
    for fname, caption in figs:
        page.add("fig", f"fig/explore/{fname}", caption)
    if classifier:
        _generation_scores(page, _read_scores([(cfg["dataset"], run_dir)], run_dir), rep / "fig")
    return _write(rep, page)


GENERATION_TEXT = (
    "Samples scored by vaelab's reference classifier for the dataset (a small CNN trained once on the "
    "training set and cached; its test accuracy is stated): the share of class-conditional samples "
    "(per-class Gaussians on the codes, or the CVAE's decoder) classified as the class asked for, and "
    "the Fréchet distance between generated and test images in the classifier's penultimate features "
    "(Heusel et al.'s formula in a small CNN's features — not Inception FID, and not comparable with "
    "it; lower is better) for z drawn from the model's prior p(z) and from a mixture fitted to the aggregate "
    "posterior."
)


def _read_scores(runs: list[tuple[str, Path]], target: Path) -> list[tuple[str, Path, dict | str]]:
    """Each (label, run)'s generation scores as `vaelab score` stored them in its eval.json, or why there are none:
    the report renders, it never computes (nor rewrites a run's results)."""
    out = []
    for label, run_dir in runs:
        ev = Run(run_dir).eval() or {}
        if all(k in ev for k in GENERATION_KEYS):
            out.append((label, run_dir, {k: ev[k] for k in SCORE_KEYS}))
        else:
            out.append(
                (
                    label,
                    run_dir,
                    ev.get("generation_error")
                    # the folder's name, not its path: a published summary must not carry one machine's paths
                    or f"not scored yet: run 'vaelab score …/{target.name}' (it trains the reference classifier once)",
                )
            )
    return out


def _generation_scores(page: Page, scored: list[tuple[str, Path, dict | str]], fig_dir: Path) -> None:
    """A table of generation scores, one row per scored run, and each run's class histogram of samples."""
    rows, hists = [], []
    for label, run_dir, s in scored:
        if isinstance(s, str):
            page.add("text", f"{label}: generation not scored ({s}).")
            continue
        rows.append(
            [
                label,
                f"{s['classifier_test_accuracy']:.1%}",
                f"{s['conditional_accuracy']:.1%}",
                f"{s['fd_prior']:.3g}",
                f"{s['fd_gmm']:.3g}",
                s["n_samples"],
            ]
        )
        classes = Run(run_dir).classes
        fig = plots.class_histograms(
            {"z ~ p(z)": s["class_histogram_prior"], "z ~ GMM": s["class_histogram_gmm"]},
            classes,
            title=f"{label}: classes of unconditional samples",
        )
        hists.append((plots.save_fig(fig, fig_dir / f"class_histogram_{Path(run_dir).name}.png").name, label))
    if not rows:
        return
    page.add("text", GENERATION_TEXT)
    page.add(
        "table",
        [
            "run",
            "classifier test acc.",
            "conditional acc.",
            "Fréchet dist., z ~ p(z)",
            "Fréchet dist., z ~ GMM",
            "samples",
        ],
        rows,
    )
    for fname, label in hists:
        page.add(
            "fig",
            f"fig/{fname}",
            f"{label}: the share of unconditional samples the reference classifier "
            "puts in each class; a sampler that covers the data evenly stays near "
            "the dashed uniform line.",
        )


# ---------------------------------------------------------------- study report

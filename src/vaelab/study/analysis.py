"""The analysis behind a report: for a study or a run, every figure, table, finding and unit conversion the report
shows, computed here (models decoded, latent maps embedded, findings tested) and written into REPORT/page.json and
REPORT/fig/. `vaelab.report` only renders that page; it never computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import data as vdata
from .. import findings as vfindings
from .. import latent, plots
from ..checkpoint import load_checkpoint
from ..errors import VaelabError
from ..evaluate import SNAPSHOT_IWAE_SAMPLES
from ..findings import per_dim
from ..generate import Sampler, decode_mean
from ..metrics import METRICS
from ..metrics import columns as metric_columns
from ..metrics import computed as registered_metrics
from ..run import Run, Study
from ..scoring import GENERATION_KEYS, SCORE_KEYS
from ..store import atomic_write_json
from .results import (
    beta_table,
    fmt_num,
    generation_runs,
    latent_table,
    read_fractions,
    representative,
    study_findings,
    summarize,
    varied_keys,
    write_results,
)

N_MAP = 2000  # test images in latent maps (t-SNE cost grows quickly)
PAGE = "page.json"
SHORT = [
    "neg_elbo",
    "recon",
    "kl",
    "bpd_elbo",
    "bpd_iwae",
    "active_units",
    "psnr",
    "ssim",
]  # the sweep tables  # what the report renders: REPORT/page.json


class Page:
    """Collects sections of figures, tables, findings and text, already formatted; saved as JSON for the report."""

    def __init__(self, title: str):
        self.title, self.sections = title, []

    def section(self, title: str):
        self.sections.append({"title": title, "items": []})

    def add(self, kind: str, *payload):
        if kind == "finding":
            f = payload[0]
            item = {"kind": kind, "claim": f.claim, "verdict": f.verdict, "evidence": f.evidence}
            item["along"] = vfindings.along_text(f)  # the verdict at each fraction of training, and its stability
        elif kind == "fig":
            item = {"kind": kind, "src": payload[0], "caption": payload[1]}
        elif kind == "table":
            item = {
                "kind": kind,
                "head": [str(h) for h in payload[0]],
                "rows": [[str(c) for c in r] for r in payload[1]],
            }
        else:
            item = {"kind": kind, "text": payload[0]}
        self.sections[-1]["items"].append(item)

    def to_dict(self) -> dict:
        return {"title": self.title, "sections": self.sections}


def _write(rep: Path, page: Page) -> Path:
    atomic_write_json(rep / PAGE, page.to_dict())
    return rep / PAGE


def _reference_table(t):
    """The reference VAE's rows of a summary table where a study varies a family or the network (the latent and
    β plots compare latent sizes and β, not families); a study of one model keeps its rows."""
    if t is None or len(t) == 0:
        return t
    kept = vfindings.reference_only(t)
    return kept.drop(columns=[k for k in vfindings.REFERENCE if k in kept])


def per_dim_unit(rows) -> str | None:
    """'bits/dim' when every run's likelihood is discrete, 'nats/dim' when none is, None when mixed or unknown."""
    got = per_dim(rows) if len(rows) else None
    return None if got is None else got[1]


def metric_header(name: str) -> str:
    """A metric's column header as its registry entry describes it: its unit and which way is better (↓ lower,
    ↑ higher)."""
    m = METRICS.get(name)
    if m is None:
        return name
    arrow = {True: " ↓", False: " ↑"}.get(m.lower_is_better, "")
    return f"{name} ({m.unit}{arrow})" if m.unit else f"{name}{arrow}"


def _table_rows(t, keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    head = keys + [metric_header(m) for m in metrics] + ["seeds"]
    rows = []
    for _, r in t.iterrows():
        cells = [f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        for m in metrics:
            v, s = r.get(m), r.get(f"{m}_std")
            cells.append(
                "–" if v is None or v != v else fmt_num(v) + (f" ± {fmt_num(s, 2)}" if s is not None and s == s else "")
            )
        cells.append(str(int(r["n"])))
        rows.append(cells)
    return head, rows


# ---------------------------------------------------------------- single-run figures


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


@torch.no_grad()
def _grid_across(out: Path, df, dataset: str, key: str, values: list, fixed: dict, data_dir, kind: str):
    rows, labels = [], []
    x = None
    for v in values:
        rid = representative(df, dataset, **{key: v, **fixed})
        if rid is None:
            continue
        cfg, model, _ = Study(out).run(rid).load()
        if kind == "samples":
            rows.append(Sampler(model).images(10, "prior", seed=0))
        else:
            if x is None:
                try:
                    _, split = _test_split(cfg, data_dir, 10)
                except VaelabError:  # no data here (the Datasets section says so): no reconstructions to show
                    return None
                x, y = split.x, split.y
                rows.append(vdata.to_float(x))
                labels.append("original")
            rows.append(model.reconstruct(x, y if model.num_classes else None))
        labels.append(f"{key} {v:g}" if isinstance(v, float) else f"{key} {v}")
    return plots.image_rows(rows, labels) if rows else None


FAMILY_METRICS = ["neg_elbo", "iwae_nll", "elbo_gap", "bpd_iwae", "active_units", "kl", "fd_prior", "train_seconds"]


def _n_dims(done, ds_name: str) -> int:
    """Values per image of a dataset, from its runs' eval.json: the report reads run directories, not the data (a
    user's npz file may be elsewhere by now)."""
    known = done.loc[done["dataset"] == ds_name, "n_dims"].dropna() if "n_dims" in done else []
    return int(known.iloc[0]) if len(known) else int(np.prod(vdata.spec(ds_name).shape))


def _architectures_section(page: Page, out: Path, df, done, fig_dir: Path, data_dir) -> None:
    """Networks compared at the study's training budget: a table, bits/dim against training time, samples and
    reconstructions per architecture, and the KL each latent group of a hierarchical model carries."""
    page.section("Architectures")
    metrics = [
        "n_params",
        "seconds_per_epoch",
        "train_seconds",
        "bpd_elbo",
        "bpd_iwae",
        "active_units",
        "psnr",
        "ssim",
        "fd_prior",
    ]
    tab = summarize(done, ["dataset", "arch"], metrics)
    page.add(
        "text",
        "The networks on the same data and training budget (each run's config says which; with "
        "time_budget the runs trained for the same wall-clock time). bits/dim from the IWAE bound are "
        "the tighter estimate; fd_prior is the Fréchet distance of prior samples in the reference "
        "classifier's features (present for scored runs). Mean ± std over seeds.",
    )
    page.add(
        "table",
        *_table_rows(
            tab,
            [c for c in tab.columns if c in varied_keys(done, ["dataset", "arch"])],
            [m for m in metrics if m in tab],
        ),
    )
    for ds_name in sorted(done["dataset"].unique()):
        _architecture_figures(
            page, out, df, done[done["dataset"] == ds_name], ds_name, _n_dims(done, ds_name), fig_dir, data_dir
        )


def _architecture_figures(page: Page, out: Path, df, sub, ds_name: str, n_dims: int, fig_dir: Path, data_dir) -> None:
    """One dataset's networks: validation bits/dim against time, KL per latent group, samples and reconstructions."""
    curves, kl_groups = {}, {}
    for r in sub.itertuples():
        hist = Study(out).run(r.run_id).metrics
        label = f"{r.arch} seed {r.seed}"
        t = np.cumsum([h["seconds"] for h in hist])
        curves[label] = [
            (float(s), h["val_neg_elbo"] / (n_dims * np.log(2))) for s, h in zip(t, hist) if "val_neg_elbo" in h
        ]
        ev = Study(out).run(r.run_id).eval() or {}
        if ev.get("kl_per_group") and r.seed == sub["seed"].min():
            kl_groups[label] = ev["kl_per_group"]
    if any(curves.values()) and bool(sub["likelihood_discrete"].fillna(False).all()):
        page.add(
            "fig",
            f"fig/{plots.save_fig(plots.bpd_vs_time(curves, ds_name), fig_dir / f'bpd_time_{ds_name}.png').name}",
            f"{ds_name}: validation bits/dim (negative ELBO) against training time, per run.",
        )
    if kl_groups:
        page.add(
            "fig",
            f"fig/{plots.save_fig(plots.kl_per_group_bars(kl_groups, ds_name), fig_dir / f'kl_groups_{ds_name}.png').name}",
            f"{ds_name}: the KL each latent group of the hierarchical model carries (test set, seed "
            f"{int(sub['seed'].min())}); top group first, finest resolution last.",
        )
    archs = sorted(sub["arch"].unique())
    for kind in ("samples", "reconstructions"):
        fig = _grid_across(out, df, ds_name, "arch", archs, {}, data_dir, kind)
        if fig is not None:
            page.add(
                "fig",
                f"fig/{plots.save_fig(fig, fig_dir / f'{kind}_arch_{ds_name}.png').name}",
                f"{ds_name}: {kind} per architecture (seed 0).",
            )


DISENTANGLEMENT_METRICS = [
    "mig",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "sap",
    "beta_vae",
    "factor_vae",
    "recon",
    "kl",
    "active_units",
]


def _disentanglement_section(page: Page, out: Path, done, fig_dir: Path, data_dir, available: set) -> None:
    """Objectives × their main weight on a factor dataset: the metrics with error bars over seeds, reconstruction
    against disentanglement, and per objective the traversals of one model with each dimension's factor."""
    page.section("Disentanglement")
    rows = done.dropna(subset=["mig"]).assign(weight=lambda d: vfindings.main_weight(d))
    if "objective" not in rows:
        rows = rows.assign(objective="elbo")
    tab = summarize(rows, ["dataset", "objective", "weight"], DISENTANGLEMENT_METRICS)
    page.add(
        "text",
        "Each objective at the values of its main weight the study sets (β for the β-VAE and β-TCVAE, γ for "
        "FactorVAE, λ_od for DIP-VAE), on a dataset whose generating factors are known. Scores of the "
        "posterior mean (vaelab.disentangle, sample sizes in the README): MIG (Chen et al. 2018), DCI "
        "disentanglement, completeness and informativeness (Eastwood & Williams 2018), SAP (Kumar et al. "
        "2018), BetaVAE (Higgins et al. 2017) and FactorVAE (Kim & Mnih 2018) scores; recon and kl in "
        "nats. Mean ± std over seeds.",
    )
    page.add(
        "table", *_table_rows(tab, ["dataset", "objective", "weight"], [m for m in DISENTANGLEMENT_METRICS if m in tab])
    )
    page.add("text", _mig_reach(rows))
    for ds_name in sorted(rows["dataset"].unique()):
        sub = rows[rows["dataset"] == ds_name]
        fig = plots.recon_vs_disentanglement(sub, ["mig", "dci_disentanglement"])
        page.add(
            "fig",
            f"fig/{plots.save_fig(fig, fig_dir / f'recon_disentanglement_{ds_name}.png').name}",
            f"{ds_name}: reconstruction against disentanglement, one point per run; larger markers for larger "
            "weights. Up and left is better on both.",
        )
        if ds_name not in available:
            continue
        for obj in sorted(sub["objective"].unique()):
            o = sub[sub["objective"] == obj].sort_values(["mig", "seed"], ascending=[False, True])
            r = o.iloc[0]  # the objective's most disentangled run (by MIG): what the objective can do at best
            figs = run_figures(
                Study(out).run_dir(r["run_id"]), fig_dir, data_dir, prefix=f"{r['run_id']}__", only={"traversals.png"}
            )
            for _, fname, _caption in figs:
                page.add(
                    "fig",
                    f"fig/{fname}",
                    f"{ds_name}, {obj} (weight {r['weight']:g}, seed {int(r['seed'])}, "
                    f"MIG {r['mig']:.2f}): traversals of each dimension from −3 to 3, "
                    "labelled with the factor it tells most about.",
                )


MIG_BAR = 0.2  # the disentanglement issue's bar: at least one objective should reach it, or the report says how far


def _mig_reach(rows) -> str:
    """One line: the highest MIG of the study and how many runs reach MIG_BAR, per objective."""
    best = rows.sort_values(["mig", "seed"], ascending=[False, True]).iloc[0]
    per = rows.groupby("objective")["mig"].agg(lambda m: f"{int((m >= MIG_BAR).sum())} of {len(m)}")
    return (
        f"Highest MIG: {best['mig']:.2f} ({best['objective']}, weight {best['weight']:g}, seed {int(best['seed'])}, "
        f"{best['dataset']}). Runs reaching MIG ≥ {MIG_BAR:g}: " + ", ".join(f"{o} {v}" for o, v in per.items()) + "."
    )


def _convergence_table(page: Page, done) -> None:
    """How far from convergence each cell stopped: epochs, best epoch, early stops, the last epoch's change."""
    if done.empty or "last_val_change" not in done or done["last_val_change"].isna().all():
        return
    keys = [k for k in ("dataset", "latent_dim", "beta") if k in done]
    rows = []
    for key, g in done.groupby(keys, sort=True):
        ch = g["last_val_change"].dropna() * 100
        rows.append(
            [
                *(key if isinstance(key, tuple) else (key,)),
                len(g),
                f"{g['epochs_done'].mean():.1f}",
                f"{g['best_epoch'].mean():.1f}" if g["best_epoch"].notna().any() else "-",
                _span(g["images_seen"]) if "images_seen" in g else "-",
                f"{int(g['stopped_early'].sum())} of {len(g)}",
                f"{ch.mean():+.3f} % ({ch.min():+.3f} … {ch.max():+.3f})" if len(ch) else "-",
            ]
        )
    page.add(
        "text",
        "How far from convergence each cell stopped, over its seeds: epochs trained, the best validation "
        "epoch (the model kept when early stopping is on), how many runs the patience rule stopped, and "
        "the last epoch's relative change of the validation negative ELBO (negative: still improving). "
        "Under a cosine schedule the last epochs run at a small learning rate, so a small last change "
        "there says the schedule ended, not that more training would not help.",
    )
    head = [*keys, "runs", "epochs", "best epoch", "images seen (min … max)", "stopped early"]
    page.add("table", [*head, "last epoch's change (min … max)"], rows)


def _span(values) -> str:
    v = values.dropna()
    return f"{int(v.min()):,} … {int(v.max()):,}" if len(v) else "-"


@dataclass
class _Study:
    """What every section of a study's analysis reads: the study, its results and where figures go."""

    out: Path
    data_dir: object
    spec: dict
    df: object
    done: object
    fig_dir: Path
    page: Page
    lt: object = None
    bt: object = None
    available: set = field(default_factory=set)  # datasets whose images are here: figures needing them are made
    shown: list = field(default_factory=list)
    scored: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def analyze_study(out: Path, data_dir=None, classifier: bool = True) -> Path:
    spec = Study(out).spec()
    df = write_results(out)
    c = _Study(
        out,
        data_dir,
        spec,
        df,
        df[df["status"] == "done"],
        Study(out).report_dir / "fig",
        Page(f"vaelab study: {spec['name']}"),
        latent_table(df),
        beta_table(df),
    )
    c.shown = generation_runs(out, df)
    c.scored = _read_scores(c.shown, out) if classifier else []
    c.counts = df["status"].value_counts().to_dict()
    for section in (
        _findings_section,
        _datasets_section,
        _setup_section,
        _model_sections,
        _latent_section,
        _beta_section,
        _samples_section,
        _organisation_section,
        _conditional_section,
    ):
        section(c)
    return _write(Study(out).report_dir, c.page)


def _findings_section(c: _Study) -> None:
    """Each claim of the original study, tested on this study's results."""
    page, df = c.page, c.df
    page.section("Findings")
    page.add(
        "text",
        "Each claim of the original study (CIFAR-10 vs Fashion-MNIST VAEs), checked against this study's "
        "measurements on the test set. With 3 or more seeds per setting, each finding gives the 95 % "
        "confidence interval of the effect it claims and a test (paired across seeds for two settings, "
        "a regression slope on log2 of the setting for a trend); it holds only when the effect has the "
        "claimed sign and p < 0.05, does not hold only when it is significant the other way or shown by two "
        "one-sided tests to lie within the finding's smallest effect of interest ('No effect: within ±δ'), and is "
        "inconclusive when the data cannot tell. With fewer seeds there is no verdict (not enough data): the evidence shows the "
        "means and which way they lean. Shares (active units) get Wilson intervals, inside [0, 1]. The findings are "
        "one family: Holm-adjusted p-values decide the verdicts, and each finding shows raw and adjusted p.",
    )
    if "perceptual_weight" in df and (df["perceptual_weight"] > 0).any():
        page.add(
            "text",
            "Some runs trained with a perceptual term (DFC-VAE): their objective is no likelihood bound. "
            "Every ELBO, IWAE and bits/dim number here comes from the likelihood terms alone.",
        )
    along = read_fractions(c.out)
    if along is not None:
        fractions = ", ".join(vfindings.fraction_name(f) for f in sorted(along["fraction"].unique()) if f < 1)
        page.add(
            "text",
            f"Every finding is also tested on the models each run kept along training (at {fractions} of its "
            "budget, and at its end; with an EMA of the weights these are good models at that moment, evaluated with the IWAE at "
            f"K = {SNAPSHOT_IWAE_SAMPLES} rather than the final K). 'Stable since ½' says the final verdict was "
            "already reached at half the budget; 'changed at 1' says more training changed it and may again.",
        )
    testable, untestable = study_findings(df, along)
    for f in testable:
        page.add("finding", f)
    if untestable:
        page.add("text", vfindings.untestable_text(untestable))


def _datasets_section(c: _Study) -> None:
    """What each dataset is, with one test image per class; notes which datasets are here."""
    page, df, data_dir, fig_dir, available = c.page, c.df, c.data_dir, c.fig_dir, c.available
    page.section("Datasets")
    for ds_name in sorted(df["dataset"].unique()):
        try:
            ds = vdata.load(ds_name, data_dir)
            available.add(ds_name)
            page.add(
                "text",
                f"{ds_name}: {len(ds.x_train):,} training and {len(ds.x_test):,} test images of "
                f"{'×'.join(map(str, ds.shape))} (C×H×W), classes: {', '.join(ds.classes)}.",
            )
            idx = [int(np.flatnonzero(ds.y_test == k)[0]) for k in range(len(ds.classes)) if (ds.y_test == k).any()]
            fig = plots.image_rows([ds.x_test[idx]], [ds_name], col_labels=[c[:11] for c in ds.classes])
            page.add(
                "fig",
                f"fig/{plots.save_fig(fig, fig_dir / f'data_{ds_name}.png').name}",
                f"One test image of each class of {ds_name}.",
            )
        except VaelabError as e:
            page.add("text", f"{ds_name}: data not available here ({e}); figures needing images are skipped.")


def _setup_section(c: _Study) -> None:
    """The runs, how far from convergence each cell stopped, the spec, and the runs that did not finish."""
    page, df, done, spec, counts = c.page, c.df, c.done, c.spec, c.counts
    page.section("Setup")
    page.add(
        "text",
        f"{len(df)} runs: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ". Each run is an ordinary vaelab run directory under runs/.",
    )
    if any((cell.get("config") or {}).get("time_budget") for cell in spec.get("cells", [])):
        page.add(
            "text",
            "These cells trained for a number of seconds (time_budget): how far each got depends on "
            "the machine and on what else it was doing, so cells compare only as far as they saw as many images "
            "(the table below). A count budget (--budget with steps, images or flops) trains the same model on "
            "every machine.",
        )
    _convergence_table(page, done)
    page.add("table", ["field", "value"], [[k, v] for k, v in spec["base"].items()])
    sweeps = [
        f"{', '.join(f'{k} ∈ {v}' for k, v in {**s.get('zip', {}), **s.get('grid', {})}.items())}"
        + (" (zipped: " + ", ".join(s["zip"]) + ")" if s.get("zip") else "")
        for s in spec["sweep"]
    ]
    for s in sweeps:
        page.add("text", "sweep: " + s)
    not_done = df[df["status"] != "done"]
    if len(not_done):
        page.add(
            "table",
            ["run", "status", "error"],
            [
                [r.run_id, r.status, getattr(r, "error", "") if isinstance(getattr(r, "error", ""), str) else ""]
                for r in not_done.itertuples()
            ],
        )


def _model_sections(c: _Study) -> None:
    """Architectures, disentanglement and model families, where the study varies them."""
    page, out, df, done, fig_dir, data_dir, available, lt = (
        c.page,
        c.out,
        c.df,
        c.done,
        c.fig_dir,
        c.data_dir,
        c.available,
        c.lt,
    )
    if "arch" in done and done["arch"].nunique() > 1:
        _architectures_section(page, out, df, done, fig_dir, data_dir)
    if "mig" in done and done["mig"].notna().any():
        _disentanglement_section(page, out, done, fig_dir, data_dir, available)
    family_keys = [
        k for k in vfindings.REFERENCE if k in lt and lt[k].nunique() > 1 and k not in ("arch", "model", "net")
    ]
    if family_keys:
        page.section("Model families")
        fam = summarize(done.assign(elbo_gap=done["neg_elbo"] - done["iwae_nll"]), ["dataset"], FAMILY_METRICS)
        keys = [c for c in fam.columns if c in varied_keys(done, ["dataset"])]
        page.add(
            "text",
            "Each family against the reference VAE (posterior gaussian, prior standard, objective elbo, "
            "linear KL schedule), the same network and data. elbo_gap = negative ELBO − IWAE bound: how "
            "far the posterior is from the true one; fd_prior: Fréchet distance of prior samples in the "
            "reference classifier's features (runs scored with `vaelab score --all`). Mean ± std over "
            "seeds; train_seconds per run.",
        )
        page.add("table", *_table_rows(fam, keys, [m for m in FAMILY_METRICS if m in fam]))
    c.lt, c.bt = _reference_table(c.lt), _reference_table(c.bt)  # the plots below compare the reference model


def _latent_section(c: _Study) -> None:
    """Metrics against latent size (per dimension where the units allow), the datasets side by side."""
    page, done, fig_dir, lt = c.page, c.done, c.fig_dir, c.lt
    short = SHORT + [m.name for m in registered_metrics()]
    if len(lt):
        page.section("Latent dimensionality")
        lt2 = lt.copy()
        unit = per_dim_unit(done)
        # Per-dimension units let the datasets share one axis: bits/dim only where every likelihood is discrete
        # (a mass over 8-bit pixels), nats/dim where all are continuous; mixed likelihoods get no shared axis.
        per = {"bits/dim": np.log(2), "nats/dim": 1.0}.get(unit)
        panels = [("kl", "KL (nats)"), ("active_units", "active units"), ("psnr", "mean per-image PSNR (dB)")]
        if per is not None:
            dims = lt2["dataset"].map(lambda d: _n_dims(done, d))
            for col in ("neg_elbo", "recon"):
                for suffix in ("", "_std", "_ci"):
                    if f"{col}{suffix}" in lt2:
                        lt2[f"{col}_pd{suffix}"] = lt2[f"{col}{suffix}"] / (dims * per)
            panels = [("neg_elbo_pd", f"negative ELBO ({unit})"), ("recon_pd", f"reconstruction ({unit})")] + panels
        else:
            panels = [("neg_elbo", "negative ELBO (nats)"), ("recon", "reconstruction (nats)")] + panels
        fig = plots.metric_vs_latent(lt2, panels)
        page.add(
            "fig",
            f"fig/{plots.save_fig(fig, fig_dir / 'latent_sweep.png').name}",
            "Metrics vs latent size at β = 1 (error bars: 95 % confidence interval of the mean over seeds).",
        )
        if lt["dataset"].nunique() > 1 and per is not None:
            fig = plots.dataset_comparison(lt2, "neg_elbo_pd", f"negative ELBO ({unit})")
            page.add(
                "fig",
                f"fig/{plots.save_fig(fig, fig_dir / 'dataset_comparison.png').name}",
                f"The same model on both datasets, negative ELBO in {unit} (error bars: 95 % CI over seeds).",
            )
        page.add("table", *_table_rows(lt, ["dataset", "latent_dim"], short))


def _beta_section(c: _Study) -> None:
    """The β trade-off: rate against distortion, and the table."""
    page, fig_dir, bt = c.page, c.fig_dir, c.bt
    short = SHORT + [m.name for m in registered_metrics()]
    if len(bt):
        page.section("β-VAE")
        fig = plots.rate_distortion(bt)
        page.add(
            "fig",
            f"fig/{plots.save_fig(fig, fig_dir / 'rate_distortion.png').name}",
            "Rate–distortion: one point per β (mean and 95 % CI over seeds). Larger β moves left (less KL) and up.",
        )
        page.add("table", *_table_rows(bt, ["dataset", "latent_dim", "beta"], short))


def _samples_section(c: _Study) -> None:
    """Samples and reconstructions across latent sizes and across β, of the reference model."""
    page, out, df, data_dir, fig_dir, bt = c.page, c.out, c.df, c.data_dir, c.fig_dir, c.bt
    page.section("Samples and reconstructions")
    ref_df = vfindings.reference_only(df)  # across latent sizes and β: the reference model's runs
    ref_done = ref_df[ref_df["status"] == "done"]
    for ds_name in sorted(ref_done["dataset"].unique()):
        dims = sorted(ref_done[(ref_done["dataset"] == ds_name) & (ref_done["beta"] == 1.0)]["latent_dim"].unique())
        for kind in ("samples", "reconstructions"):
            fig = _grid_across(out, ref_df, ds_name, "latent_dim", dims, {"beta": 1.0}, data_dir, kind)
            if fig is not None:
                page.add(
                    "fig",
                    f"fig/{plots.save_fig(fig, fig_dir / f'{kind}_latent_{ds_name}.png').name}",
                    f"{ds_name}: {kind} across latent sizes (β = 1, seed 0).",
                )
        if len(bt) and ds_name in set(bt["dataset"]):
            z = int(bt[bt["dataset"] == ds_name]["latent_dim"].iloc[0])
            betas = sorted(bt[bt["dataset"] == ds_name]["beta"].unique())
            for kind in ("samples", "reconstructions"):
                fig = _grid_across(out, ref_df, ds_name, "beta", betas, {"latent_dim": z}, data_dir, kind)
                if fig is not None:
                    page.add(
                        "fig",
                        f"fig/{plots.save_fig(fig, fig_dir / f'{kind}_beta_{ds_name}.png').name}",
                        f"{ds_name}: {kind} across β (latent_dim {z}, seed 0).",
                    )


def _organisation_section(c: _Study) -> None:
    """The class structure of the codes, beside its baselines, and latent maps of the extreme latent sizes."""
    page, out, df, done, data_dir, fig_dir, available, lt = (
        c.page,
        c.out,
        c.df,
        c.done,
        c.data_dir,
        c.fig_dir,
        c.available,
        c.lt,
    )
    page.section("Latent-space organisation")
    org = [
        m
        for m in (
            "probe_accuracy",
            "probe_accuracy_untrained",
            "probe_accuracy_pca",
            "chance_accuracy",
            "knn_accuracy",
            "silhouette",
        )
        if m in lt
    ]
    if len(lt) and org:
        page.add(
            "text",
            "How well the code separates the classes without ever seeing a label: a linear probe "
            "(logistic regression fit on training codes) and k-NN accuracy on test codes, and the "
            "silhouette of the test codes' class clusters. Baselines for the same probe: the same "
            "encoder at the run's initial weights, before any training (_untrained), PCA of the pixels "
            "to latent_dim dimensions "
            "(_pca) and chance, the test set's most frequent class (chance_accuracy). What training "
            "did is the gap to its own initial weights.",
        )
        page.add("table", *_table_rows(lt, ["dataset", "latent_dim"], org))
    for ds_name in sorted(set(done["dataset"]) & available):
        sub = done[(done["dataset"] == ds_name) & (done["beta"] == 1.0)]
        for z in sorted({int(sub["latent_dim"].min()), int(sub["latent_dim"].max())}) if len(sub) else []:
            rid = representative(df, ds_name, latent_dim=z, beta=1.0)
            figs = run_figures(
                Study(out).run_dir(rid),
                fig_dir,
                data_dir,
                prefix=f"{rid}__",
                only={"latent_map.png", "manifold.png", "traversals.png"},
            )
            for _, fname, caption in figs:
                page.add("fig", f"fig/{fname}", f"{ds_name}, latent_dim {z}: {caption}")


def _conditional_section(c: _Study) -> None:
    """Conditional generation of the runs the report shows, and their generation scores."""
    page, data_dir, fig_dir, available, shown, scored = c.page, c.data_dir, c.fig_dir, c.available, c.shown, c.scored
    page.section("Conditional generation")
    page.add(
        "text",
        "Generation controlled through the latent space, without retraining: latent arithmetic along "
        "class-centroid differences, samples from a Gaussian fitted to each class's codes, and samples "
        "from a mixture fitted to the aggregate posterior instead of the prior, beside their nearest "
        "training images.",
    )
    for label, run_dir in shown:
        rid = run_dir.name
        if Run(run_dir).config.dataset not in available:
            continue
        figs, _ = latent.explore(run_dir, data_dir, out_dir=fig_dir / f"{rid}__explore")
        for fname, caption in figs:
            page.add("fig", f"fig/{rid}__explore/{fname}", f"{label}: {caption}")
    _generation_scores(page, scored, fig_dir)


def analyze(target: str | Path, data_dir=None, classifier: bool = True) -> Path:
    """Everything a study's or a run's report shows, into TARGET/report/ (page.json and fig/); returns page.json."""
    target = Path(target)
    if Study(target).exists():
        return analyze_study(target, data_dir, classifier)
    if Run(target, check=False).config_path.is_file():
        if not Run(target, check=False).checkpoint_path.is_file():
            load_checkpoint(target)  # says why: an old pickle checkpoint, or none yet
        return analyze_run(target, data_dir, classifier)
    raise VaelabError(f"{target}: neither a study directory (study.json) nor a run directory (config.json)")

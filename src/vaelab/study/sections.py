"""Report sections about model families, architectures, disentanglement, generation scores and convergence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.evaluation.generate import Sampler
from vaelab.exploration import plots
from vaelab.study import model_findings
from vaelab.study.folders import Study
from vaelab.study.page import Page, _table_rows
from vaelab.study.results import (
    representative,
    summarize,
    varied_keys,
)
from vaelab.study.run_figures import _test_split, run_figures


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
    rows = done.dropna(subset=["mig"]).assign(weight=lambda d: model_findings.main_weight(d))
    if "objective" not in rows:
        rows = rows.assign(objective="elbo")
    tab = summarize(rows, ["dataset", "objective", "weight"], DISENTANGLEMENT_METRICS)
    page.add(
        "text",
        "Each objective at the values of its main weight the study sets (β for the β-VAE and β-TCVAE, γ for "
        "FactorVAE, λ_od for DIP-VAE), on a dataset whose generating factors are known. Scores of the "
        "posterior mean (vaelab.evaluation.disentangle, sample sizes in the README): MIG (Chen et al. 2018), DCI "
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

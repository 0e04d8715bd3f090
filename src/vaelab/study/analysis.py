"""The analysis behind a report: for a study or a run, every figure, table, finding and unit conversion the report
shows, computed here (models decoded, latent maps embedded, findings tested) and written into REPORT/page.json and
REPORT/fig/. `vaelab.report` only renders that page; it never computes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.evaluation.metrics import computed as registered_metrics
from vaelab.exploration import latent, plots
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.runs.run import Run
from vaelab.study import findings as vfindings
from vaelab.study import verdicts
from vaelab.study.folders import Study
from vaelab.study.page import SHORT, Page, _reference_table, _table_rows, _write, per_dim_unit
from vaelab.study.results import (
    beta_table,
    generation_runs,
    latent_table,
    read_fractions,
    representative,
    study_findings,
    summarize,
    varied_keys,
    write_results,
)
from vaelab.study.run_figures import _generation_scores, _read_scores, analyze_run, run_figures
from vaelab.study.sections import (
    FAMILY_METRICS,
    _architectures_section,
    _convergence_table,
    _disentanglement_section,
    _grid_across,
    _n_dims,
)


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


FINDINGS_INTRO = (
    "Each claim of the original study (CIFAR-10 vs Fashion-MNIST VAEs), checked against this study's measurements "
    "on the test set. The seed is the replicate: an effect over latent sizes or β is one value per seed, a trend one "
    "slope per seed on log2 of the setting — after checking that a straight line fits (lack of fit against one mean "
    "per setting); where it does not, each step between adjacent settings is tested (paired by seed) and the "
    "verdict says which parts hold. Models of different families are compared unpaired (Welch). A claim holds when "
    "its effect has the claimed sign and is significant; it is 'no effect (negligible)' when two one-sided tests "
    "place it within its smallest effect of interest δ (1 % of the quantity's level, per doubling for a trend), "
    "whatever its p; it does not hold when significant the other way, and is inconclusive otherwise. With fewer "
    "than 3 seeds there is no verdict (not enough data). The findings are one family: Holm-adjusted p-values decide "
    "the verdicts. Each finding says whether its cells converged (test −ELBO within 1 % from half the budget to the "
    "end)."
)


def _findings_section(c: _Study) -> None:
    """Each claim of the original study, tested on this study's results."""
    page, df = c.page, c.df
    page.section("Findings")
    page.add(
        "text",
        FINDINGS_INTRO,
    )
    if "perceptual_weight" in df and (df["perceptual_weight"] > 0).any():
        page.add(
            "text",
            "Some runs trained with a perceptual term (DFC-VAE): their objective is no likelihood bound. "
            "Every ELBO, IWAE and bits/dim number here comes from the likelihood terms alone.",
        )
    along = read_fractions(c.out)
    if along is not None:
        fractions = ", ".join(verdicts.fraction_name(f) for f in sorted(along["fraction"].unique()) if f < 1)
        page.add(
            "text",
            f"Every finding is also tested on the models each run kept along training (at {fractions} of its "
            "budget, and at its end; with an EMA of the weights these are good models at that moment, evaluated like the "
            "final ones, the IWAE at the same K). 'Stable since ½' says the final verdict was "
            "already reached at half the budget; 'changed at 1' says more training changed it and may again.",
        )
    testable, untestable = study_findings(df, along)
    _glance(c, testable)
    for f in testable:
        page.add("finding", f)
    if untestable:
        page.add("text", verdicts.untestable_text(untestable))


def _glance(c: _Study, found: list) -> None:
    """The findings at a glance: one table (claim × dataset → verdict, effect, Holm p, stability, convergence) and
    one forest plot of the effects against their ±δ bands."""
    if not found:
        return
    c.page.add("glance", found)
    points = verdicts.forest_points(found)
    if points:
        plots.save_fig(plots.forest(points), c.fig_dir / "findings_forest.png")
        c.page.add(
            "fig",
            "fig/findings_forest.png",
            "Each tested effect with its 95 % interval, in units of its smallest effect of interest δ (the band: "
            "no effect), positive = the claimed direction; colour = the finding's verdict.",
        )


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

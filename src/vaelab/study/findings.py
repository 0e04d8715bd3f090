"""The original study's claims as data, tested on per-run rows with the seed as the replicate: each finding states its evidence, statistics, smallest effect and verdict.

Findings read per-run rows (one per trained cell), never pre-averaged tables. The seed is the unit: an effect that
averages over conditions (latent sizes, β) is one value per seed, and a trend is one slope per seed. A trend is
first checked for a straight line in log2 of the setting (lack of fit against one mean per setting); where the line
does not fit, the curve is judged step by step (adjacent settings, paired by seed). A claim *holds* when its effect
has the claimed sign and is significant; *no effect (negligible)* when two one-sided tests place it within its
smallest effect of interest δ (whatever its p); *does not hold* when significant the other way; *inconclusive*
otherwise. p-values are Holm-adjusted over the study. With fewer than three seeds there is no verdict.
"""

from __future__ import annotations

import math

import pandas as pd

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.study.model_findings import REFERENCE, disentanglement, families, kl_groups, reference_only
from vaelab.study.stats import MIN_SEEDS, fmt, paired, share_over_seeds
from vaelab.study.trends import DELTA_SHARE, Trend, smallest_effect, trend_findings
from vaelab.study.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    MIXED,
    UNKNOWN,
    Finding,
    converged,
    effect_test,
    holm,
    means_only,
    min_seeds,
    no_stats_note,
    tested,
)

__all__ = ["REFERENCE", "TRENDS", "Trend", "compute", "reference_only", "smallest_effect"]

TRENDS = {
    "latent_size": Trend(
        "larger latent sizes improve reconstruction", "latent_dim", (("recon", -1),),
        "{ds}: larger latent sizes improve reconstruction.", unit="nats", last_gain=True,
    ),
    "compression_cost": Trend(
        "a larger latent space costs compression (KL rises)", "latent_dim", (("kl", +1),),
        "{ds}: a larger latent space costs compression (the KL, the code's rate, rises with latent size).", unit="nats",
    ),
    "beta_tradeoff": Trend(
        "β trades reconstruction for a compact code (by construction)", "beta", (("kl", -1), ("recon", +1)),
        "{ds}: β trades reconstruction for a more compact code (less KL, worse reconstruction) — holds by "
        "construction of the β-weighted objective: a check that training did what it asks, not evidence about the "
        "data.", "all", "nats",
    ),
    "beta_organisation": Trend(
        "larger β organises the codes", "beta",
        (("probe_accuracy", +1), ("knn_accuracy", +1), ("silhouette", +1)),
        "{ds}: larger β gives a more organised latent space (probe, k-NN and silhouette rise with β).", "combine",
    ),
}  # fmt: skip


# ---------------------------------------------------------------- per-dimension units


def per_dim(rows: pd.DataFrame) -> tuple[pd.Series, str] | None:
    """Negative ELBO per dimension: bits/dim where every likelihood is discrete (a probability mass over 8-bit
    pixels), nats/dim where every one is continuous; None when they are mixed (a mass and a density do not
    compare)."""
    discrete = rows.get("likelihood_discrete")
    if discrete is None or discrete.isna().any() or "n_dims" not in rows:
        return None
    if discrete.astype(bool).all():
        return rows["neg_elbo"] / (rows["n_dims"] * math.log(2)), "bits/dim"
    if not discrete.astype(bool).any():
        return rows["neg_elbo"] / rows["n_dims"], "nats/dim"
    return None


# ---------------------------------------------------------------- the claims that compare, not trend

COMPLEXITY = "Fashion-MNIST is easier to model than CIFAR-10 (lower negative ELBO per dimension)."


def dataset_complexity(latent: pd.DataFrame) -> list[Finding]:
    """Claim 1 with the seed as the unit: each seed's CIFAR-10 minus Fashion-MNIST per dimension, averaged over the
    latent sizes both ran, then a t-test over seeds."""
    topic = "Fashion-MNIST is easier than CIFAR-10"
    if not {"fashion-mnist", "cifar10"} <= set(latent.get("dataset", [])):
        return [Finding(COMPLEXITY, "needs finished runs of both datasets", UNKNOWN, topic=topic)]
    rows = latent[latent["dataset"].isin(["fashion-mnist", "cifar10"])].copy()
    unit = per_dim(rows)
    if unit is None:
        why = (
            "the runs mix discrete and continuous likelihoods, whose values per dimension do not compare (or "
            "eval.json lacks n_dims: re-evaluate)"
        )
        return [Finding(COMPLEXITY, why, UNKNOWN, topic=topic)]
    rows["per_dim"], unit_name = unit
    piv = rows.pivot_table(index=["latent_dim", "seed"], columns="dataset", values="per_dim").dropna()
    if piv.empty:
        return [Finding(COMPLEXITY, "no latent size and seed was run on both datasets", UNKNOWN, topic=topic)]
    sizes = sorted(piv.index.get_level_values(0).unique())
    k = int(piv.groupby(level=0).size().min())
    fm, c10 = piv["fashion-mnist"].mean(), piv["cifar10"].mean()
    head = (
        f"{fmt(fm)} vs {fmt(c10)} {unit_name} (Fashion-MNIST vs CIFAR-10, mean over latent sizes "
        f"{', '.join(f'{s:g}' for s in sizes)})"
    )
    if k >= MIN_SEEDS:
        per_seed = (piv["cifar10"] - piv["fashion-mnist"]).groupby(level="seed").mean()
        eff = paired(per_seed, "t-test over seeds")
        delta = DELTA_SHARE * float(piv.to_numpy().mean())  # 1 % of the datasets' mean level
        text = (
            f"{head}; CIFAR-10 minus Fashion-MNIST, averaged over latent sizes within each seed (the seed is the "
            f"replicate): {eff.text(unit_name)}."
        )
        found = tested(COMPLEXITY, text, [effect_test(eff, +1, delta, unit_name)], topic=topic)
        return converged([found], rows)
    means = piv.groupby(level=0).mean()
    wins = int((means["fashion-mnist"] < means["cifar10"]).sum())
    verdict = HOLDS if wins == len(means) else FAILS if wins == 0 else MIXED
    text = f"{head}; Fashion-MNIST lower at {wins} of {len(means)} sizes{no_stats_note(k)}."
    return [means_only(COMPLEXITY, text, verdict, topic)]


def collapse(latent: pd.DataFrame) -> list[Finding]:
    """Posterior collapse at the largest latent size: the share of active units per seed (the seed is the replicate;
    units of one model are not independent), its t interval over seeds; 'holds' below 90 %."""
    out = []
    if "active_units" not in latent:
        return out
    for ds, sub in latent.dropna(subset=["active_units"]).groupby("dataset"):
        claim = f"{ds}: a large latent space is not fully used (posterior collapse of unneeded units)."
        topic = "a large latent space is not fully used"
        big, small = int(sub["latent_dim"].max()), int(sub["latent_dim"].min())
        frac = sub[sub["latent_dim"] == big]["active_units"] / big
        tail = f"; at latent_dim {small}: {fmt(sub[sub['latent_dim'] == small]['active_units'].mean())} active"
        if len(frac) >= MIN_SEEDS:
            e = share_over_seeds(frac)
            verdict = (
                HOLDS
                if e.hi < 0.9
                else FAILS
                if e.lo >= 1.0 or e.estimate >= 1.0
                else MIXED
                if e.lo >= 0.9
                else INCONCLUSIVE
            )
            text = (
                f"share of active units at latent_dim {big}, one per seed: {', '.join(f'{v:.1%}' for v in frac)}; "
                f"mean {e.estimate:.1%}, 95 % t interval over seeds [{e.lo:.1%}, {e.hi:.1%}] ('holds' below 90 %)"
                f"{tail}."
            )
            out += converged([Finding(claim, text, verdict, topic=topic, dataset=ds)], sub)
            continue
        m = float(frac.mean())
        lean = HOLDS if m < 0.9 else MIXED if m < 1.0 else FAILS
        text = f"{fmt(m * big)} of {big} units active at latent_dim {big} ({m:.0%}; 'holds' below 90 %){tail}"
        out.append(means_only(claim, text + f"{no_stats_note(len(frac))}.", lean, topic, ds))
    return out


def organisation(latent: pd.DataFrame) -> list[Finding]:
    """'Training organises the latent space by class', against the same probe on the run's encoder at its initial
    weights (random conv features already separate classes) and on PCA of the pixels: per seed, the mean over
    latent sizes of each difference, then a t-test over seeds."""
    out = []
    if "probe_accuracy" not in latent:
        return out
    for ds, sub in latent.dropna(subset=["probe_accuracy"]).groupby("dataset"):
        claim = f"{ds}: training organises the latent space by class although no label was used."
        topic = "training organises the codes by class"
        if "probe_accuracy_untrained" not in sub or sub["probe_accuracy_untrained"].isna().any():
            why = (
                "eval.json has no untrained-encoder baseline (evaluated by vaelab < 0.2): re-run vaelab evaluate on "
                "these runs"
            )
            out.append(Finding(claim, why, UNKNOWN, topic=topic, dataset=ds))
            continue
        out += converged([_organisation(claim, topic, ds, sub)], sub)
    return out


def _organisation(claim: str, topic: str, ds: str, sub: pd.DataFrame) -> Finding:
    pca = "probe_accuracy_pca" in sub and sub["probe_accuracy_pca"].notna().all()
    sizes = "; ".join(
        f"latent_dim {int(z)}: {g['probe_accuracy'].mean():.1%} trained vs {g['probe_accuracy_untrained'].mean():.1%} "
        f"at initial weights" + (f", {g['probe_accuracy_pca'].mean():.1%} PCA" if pca else "")
        for z, g in sub.groupby("latent_dim")
    )
    chance = float(sub["chance_accuracy"].mean()) if "chance_accuracy" in sub else math.nan
    head = (
        f"linear-probe test accuracy on the codes vs the same encoder at its initial weights (untrained) and PCA of "
        f"the pixels to as many dimensions — {sizes}; chance (most frequent class) {chance:.1%}"
    )
    k = min_seeds(sub, ["latent_dim"])
    gap = (sub["probe_accuracy"] - sub["probe_accuracy_untrained"]) * 100
    if k < MIN_SEEDS:
        m = float(gap.mean())
        lean = HOLDS if m >= 2 else FAILS if m <= 0 else MIXED
        return means_only(
            claim, f"{head}; 'holds' from 2 points above the untrained encoder{no_stats_note(k)}.", lean, topic, ds
        )
    delta = 100 * smallest_effect(sub, "probe_accuracy")  # 1 % of the trained probe's accuracy
    eff = paired(gap.groupby(sub["seed"]).mean(), "t-test over seeds")
    text = f"{head}; trained minus untrained, averaged over latent sizes within each seed: {eff.text('points')}"
    tests = [effect_test(eff, +1, delta, "points", 0, "trained − untrained")]
    if pca:
        pgap = ((sub["probe_accuracy"] - sub["probe_accuracy_pca"]) * 100).groupby(sub["seed"]).mean()
        pe = paired(pgap, "t-test over seeds")
        text += f"; trained minus PCA of the pixels: {pe.text('points')}"
        tests.append(effect_test(pe, +1, delta, "points", 1, "trained − PCA"))
    if "silhouette" in sub and sub["silhouette"].notna().any():
        text += f"; silhouette of the test codes' classes (a clustering check, not in the verdict) {fmt(sub['silhouette'].mean())}"
    return tested(claim, text + ".", tests, "all", topic, ds)


def generation(latent: pd.DataFrame) -> list[Finding]:
    """Generation scored by the reference classifier (present for the runs the report or `vaelab explore` scored)."""
    out = []
    if not {"fd_prior", "fd_gmm", "conditional_accuracy"} <= set(latent.columns):
        return out
    for ds, sub in latent.dropna(subset=["fd_prior", "fd_gmm"]).groupby("dataset"):
        claim = (
            f"{ds}: sampling a mixture fitted to the aggregate posterior gives samples closer to the data than "
            "sampling N(0, I) (Ghosh et al. 2020)."
        )
        topic = "a GMM on the codes samples better than N(0, I)"
        pairs = "; ".join(
            f"{fmt(r.fd_prior)} → {fmt(r.fd_gmm)} (latent_dim {int(r.latent_dim)}, seed {int(r.seed)})"
            for r in sub.itertuples()
        )
        head = f"Fréchet distance in the reference classifier's features, N(0, I) → GMM: {pairs}"
        if len(sub) >= MIN_SEEDS and sub["latent_dim"].nunique() == 1:
            eff = paired(sub["fd_prior"] - sub["fd_gmm"])  # two samplers of one model: paired by design
            delta = DELTA_SHARE * float(sub["fd_prior"].mean())
            text = f"{head}; N(0, I) minus GMM, paired (two samplers of each model): {eff.text()}."
            out += converged([tested(claim, text, [effect_test(eff, +1, delta)], topic=topic, dataset=ds)], sub)
        else:
            wins = int((sub["fd_gmm"] < sub["fd_prior"]).sum())
            lean = HOLDS if wins == len(sub) else FAILS if wins == 0 else MIXED
            text = f"{head}{no_stats_note(len(sub)).replace('per setting', 'scored')}."
            out.append(means_only(claim, text, lean, topic, ds))
    for ds, sub in latent.dropna(subset=["conditional_accuracy"]).groupby("dataset"):
        out.append(_conditional(ds, sub))
    return out


def _conditional(ds: str, sub: pd.DataFrame) -> Finding:
    """Class-conditional generation at the latent size with the most scored seeds: 'holds' when the reference
    classifier labels significantly more than half the samples as the class asked for, 'partly' when only more
    than twice chance, 'does not hold' when significantly below half and not above twice chance."""
    claim = f"{ds}: the latent space supports class-conditional generation without retraining."
    topic = "class-conditional generation without retraining"
    sizes = sub.groupby("latent_dim").size()
    z = int(sizes[sizes == sizes.max()].index.max())  # the most seeds; of those, the largest size
    acc = sub[sub["latent_dim"] == z]["conditional_accuracy"].to_numpy(float)
    try:  # samples are drawn equally per class: chance is one over the dataset's classes
        chance = vdata.spec(ds).chance
    except VaelabError:  # a user's dataset file that is not here: the test set's measured chance level
        chance = float(sub["chance_accuracy"].iloc[0]) if "chance_accuracy" in sub else 0.1
    head = (
        f"the reference classifier labels {', '.join(f'{a:.0%}' for a in acc)} of samples from per-class Gaussians "
        f"as the class asked for (latent_dim {z}, one score per seed; chance {chance:.0%})"
    )
    if len(acc) >= MIN_SEEDS:
        half, twice = paired(acc - 0.5), paired(acc - 2 * chance)
        text = f"{head}; minus one half: {half.text()}; minus twice chance: {twice.text()}."
        tests = [
            effect_test(half, +1, DELTA_SHARE * 0.5, "", 0, "accuracy − ½"),  # δ: of the level compared (½)
            effect_test(twice, +1, DELTA_SHARE * 2 * chance, "", 1, "accuracy − 2 × chance"),
        ]
        return converged([tested(claim, text, tests, "combine", topic, ds)], sub[sub["latent_dim"] == z])[0]
    a = float(acc.mean())
    lean = HOLDS if a >= 0.5 else MIXED if a > 2 * chance else FAILS
    return means_only(claim, f"{head}{no_stats_note(len(acc)).replace('per setting', 'scored')}.", lean, topic, ds)


def beta_missing(latent: pd.DataFrame, beta: pd.DataFrame | None) -> list[Finding]:
    """The β claims of a dataset that the latent sweep has and the β sweep lacks (e.g. a grid cut to fit its
    time): named, so that a report's line of untestable claims says which dataset they are missing for."""
    if beta is None or len(beta) == 0:
        return []  # beta_tradeoff already says that no β sweep has finished
    return [
        Finding(
            f"{ds}: β trades reconstruction for a more compact code, and larger β gives a more organised latent space.",
            f"no β sweep of {ds} in this grid",
            UNKNOWN,
            dataset=ds,
        )
        for ds in sorted(set(latent["dataset"]) - set(beta["dataset"]))
    ]


def beta_tradeoff(beta: pd.DataFrame | None) -> list[Finding]:
    if beta is None or len(beta) == 0:
        return [Finding("β trades reconstruction for a more compact code.", "no β sweep has finished", UNKNOWN)]
    return trend_findings(TRENDS["beta_tradeoff"], beta)


def latent_size(latent: pd.DataFrame) -> list[Finding]:
    """Claim 2's first half (reconstruction against latent size) and the posterior collapse beside it."""
    return trend_findings(TRENDS["latent_size"], latent) + collapse(latent)


def compression_cost(latent: pd.DataFrame) -> list[Finding]:
    """Claim 2's other half: a larger latent space costs compression — the rate (KL) rises with latent size."""
    return trend_findings(TRENDS["compression_cost"], latent, skip_single=True)


def beta_organisation(beta: pd.DataFrame | None) -> list[Finding]:
    """Claim 4's other half: larger β gives a more organised latent space (probe, k-NN, silhouette)."""
    return trend_findings(TRENDS["beta_organisation"], beta, skip_single=True)


def compute(latent: pd.DataFrame, beta: pd.DataFrame, done: pd.DataFrame | None = None) -> list[Finding]:
    """All findings from per-run rows: `latent` the finished β = 1 runs, `beta` the finished runs of the β sweep,
    `done` every finished run (for the disentanglement claims). The original study's claims read the reference
    VAE's runs; the family findings compare the others with it."""
    fams = (families(latent) + kl_groups(latent)) if latent is not None else []
    fams += disentanglement(done)
    latent, beta = reference_only(latent), reference_only(beta)
    if latent is None or len(latent) == 0:
        return holm([Finding("The study's claims", "no finished runs at β = 1 yet", UNKNOWN)] + fams)
    return holm(
        dataset_complexity(latent)
        + latent_size(latent)
        + compression_cost(latent)
        + beta_tradeoff(beta)
        + beta_organisation(beta)
        + beta_missing(latent, beta)
        + organisation(latent)
        + generation(latent)
        + fams
    )

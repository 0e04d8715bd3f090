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
from vaelab.study.contrasts import CONDITION, CONTRASTS, contrast_findings
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
    no_stats_note,
    tested,
)

__all__ = ["CONTRASTS", "REFERENCE", "TRENDS", "Trend", "compute", "reference_only", "smallest_effect"]

TRENDS = {
    "latent_size": Trend(
        "larger latent sizes improve reconstruction", CONDITION, (("recon", -1),),
        "{ds}: larger latent sizes improve reconstruction.", unit="nats", last_gain=True,
    ),
    "compression_cost": Trend(
        "a larger latent space costs compression (KL rises)", CONDITION, (("kl", +1),),
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
    piv = rows.pivot_table(index=[CONDITION, "seed"], columns="dataset", values="per_dim").dropna()
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
        big, small = int(sub[CONDITION].max()), int(sub[CONDITION].min())
        frac = sub[sub[CONDITION] == big]["active_units"] / big
        tail = f"; at {CONDITION} {small}: {fmt(sub[sub[CONDITION] == small]['active_units'].mean())} active"
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
                f"share of active units at {CONDITION} {big}, one per seed: {', '.join(f'{v:.1%}' for v in frac)}; "
                f"mean {e.estimate:.1%}, 95 % t interval over seeds [{e.lo:.1%}, {e.hi:.1%}] ('holds' below 90 %)"
                f"{tail}."
            )
            out += converged([Finding(claim, text, verdict, topic=topic, dataset=ds)], sub)
            continue
        m = float(frac.mean())
        lean = HOLDS if m < 0.9 else MIXED if m < 1.0 else FAILS
        text = f"{fmt(m * big)} of {big} units active at {CONDITION} {big} ({m:.0%}; 'holds' below 90 %){tail}"
        out.append(means_only(claim, text + f"{no_stats_note(len(frac))}.", lean, topic, ds))
    return out


def organisation(latent: pd.DataFrame) -> list[Finding]:
    """'Training organises the latent space by class', against the same probe on the run's encoder at its initial
    weights (random conv features already separate classes) and on PCA of the pixels (CONTRASTS)."""
    return contrast_findings(CONTRASTS["organisation"], latent)


def generation(latent: pd.DataFrame) -> list[Finding]:
    """Generation scored by the reference classifier (present for the runs the report or `vaelab explore` scored):
    a GMM on the codes against N(0, I) (CONTRASTS), and class-conditional sampling."""
    if not {"fd_prior", "fd_gmm", "conditional_accuracy"} <= set(latent.columns):
        return []
    out = contrast_findings(CONTRASTS["gmm_sampling"], latent.dropna(subset=["fd_gmm"]))
    for ds, sub in latent.dropna(subset=["conditional_accuracy"]).groupby("dataset"):
        out.append(_conditional(ds, sub))
    return out


def _conditional(ds: str, sub: pd.DataFrame) -> Finding:
    """Class-conditional generation at the latent size with the most scored seeds: 'holds' when the reference
    classifier labels significantly more than half the samples as the class asked for, 'partly' when only more
    than twice chance, 'does not hold' when significantly below half and not above twice chance."""
    claim = f"{ds}: the latent space supports class-conditional generation without retraining."
    topic = "class-conditional generation without retraining"
    sizes = sub.groupby(CONDITION).size()
    z = int(sizes[sizes == sizes.max()].index.max())  # the most seeds; of those, the largest size
    acc = sub[sub[CONDITION] == z]["conditional_accuracy"].to_numpy(float)
    try:  # samples are drawn equally per class: chance is one over the dataset's classes
        chance = vdata.spec(ds).chance
    except VaelabError:  # a user's dataset file that is not here: the test set's measured chance level
        chance = float(sub["chance_accuracy"].iloc[0]) if "chance_accuracy" in sub else 0.1
    head = (
        f"the reference classifier labels {', '.join(f'{a:.0%}' for a in acc)} of samples from per-class Gaussians "
        f"as the class asked for ({CONDITION} {z}, one score per seed; chance {chance:.0%})"
    )
    if len(acc) >= MIN_SEEDS:
        half, twice = paired(acc - 0.5), paired(acc - 2 * chance)
        text = f"{head}; minus one half: {half.text()}; minus twice chance: {twice.text()}."
        tests = [
            effect_test(half, +1, DELTA_SHARE * 0.5, "", 0, "accuracy − ½"),  # δ: of the level compared (½)
            effect_test(twice, +1, DELTA_SHARE * 2 * chance, "", 1, "accuracy − 2 × chance"),
        ]
        return converged([tested(claim, text, tests, "combine", topic, ds)], sub[sub[CONDITION] == z])[0]
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


def compute(
    latent: pd.DataFrame, beta: pd.DataFrame, done: pd.DataFrame | None = None, along: pd.DataFrame | None = None
) -> list[Finding]:
    """All findings from per-run rows: `latent` the finished β = 1 runs, `beta` the finished runs of the β sweep,
    `done` every finished run (for the disentanglement claims), `along` the models kept along training (for the
    families' equal-images comparison). The original study's claims read the reference VAE's runs; the family
    findings compare the others with it."""
    fams = (families(latent, along) + kl_groups(latent)) if latent is not None else []
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

"""Comparison claims as data: a quantity of the same runs against its baselines (an untrained encoder, PCA, another sampler), with the seed as the replicate."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from vaelab.study.stats import MIN_SEEDS, fmt, paired
from vaelab.study.trends import DELTA_SHARE
from vaelab.study.verdicts import (
    FAILS,
    HOLDS,
    MIXED,
    UNKNOWN,
    Finding,
    converged,
    effect_test,
    means_only,
    min_seeds,
    no_stats_note,
    tested,
)

# The latent sweep's axis. Its settings are conditions: a comparison averages its differences over them within each
# seed, and the seeds are the replicates (never the settings).
CONDITION = "latent_dim"


@dataclass(frozen=True)
class Baseline:
    """What the measured quantity is held against: its column, its words in the evidence, and the test's label."""

    column: str
    words: str  # beside its values ("30.0% at initial weights")
    name: str  # in "trained minus NAME"
    label: str
    required: bool = True  # a required baseline missing leaves the claim untestable; an optional one is skipped


@dataclass(frozen=True)
class Contrast:
    """A claim that `metric` beats each of its baselines (sign × (metric − baseline) > 0) on the same runs: per seed,
    the difference averaged over the settings of `over`, then a t-test over seeds, against δ = DELTA_SHARE of the
    metric's level (× scale). Every baseline must be beaten ('all'). Below MIN_SEEDS seeds the means lean: 'holds'
    from `lean_from` (mean difference, scaled) or, without it, when every run beats the first baseline."""

    topic: str
    text: str  # the claim; {ds}: the dataset
    metric: str
    words: str  # the metric's own words beside its values
    baselines: tuple[Baseline, ...]
    what: str  # what is measured, opening the evidence
    sign: int = +1
    over: str = CONDITION
    scale: float = 1.0  # 100: shares in points
    unit: str = ""
    percent: bool = False  # values shown as percentages
    lean_from: float | None = None
    missing: str = "no baseline in eval.json: re-run vaelab evaluate on these runs"
    notes: Callable[[pd.DataFrame], str] | None = None  # what the evidence adds that is not in the verdict


def _chance_and_silhouette(sub: pd.DataFrame) -> str:
    chance = float(sub["chance_accuracy"].mean()) if "chance_accuracy" in sub else math.nan
    text = f"; chance (most frequent class) {chance:.1%}"
    if "silhouette" in sub and sub["silhouette"].notna().any():
        text += f"; silhouette of the test codes' classes (a clustering check, not in the verdict) {fmt(sub['silhouette'].mean())}"
    return text


CONTRASTS = {
    "organisation": Contrast(
        topic="training organises the codes by class",
        text="{ds}: training organises the latent space by class although no label was used.",
        metric="probe_accuracy",
        words="trained",
        baselines=(
            Baseline("probe_accuracy_untrained", "at initial weights", "the untrained encoder", "trained − untrained"),
            Baseline("probe_accuracy_pca", "PCA", "PCA of the pixels", "trained − PCA", required=False),
        ),
        what=(
            "linear-probe test accuracy on the codes vs the same encoder at its initial weights (untrained) and PCA "
            "of the pixels to as many dimensions"
        ),
        scale=100,
        unit="points",
        percent=True,
        lean_from=2.0,
        missing="eval.json has no untrained-encoder baseline (evaluated by vaelab < 0.2): re-run vaelab evaluate on these runs",
        notes=_chance_and_silhouette,
    ),
    "gmm_sampling": Contrast(
        topic="a GMM on the codes samples better than N(0, I)",
        text=(
            "{ds}: sampling a mixture fitted to the aggregate posterior gives samples closer to the data than sampling "
            "N(0, I) (Ghosh et al. 2020)."
        ),
        metric="fd_prior",
        words="N(0, I)",
        baselines=(Baseline("fd_gmm", "GMM", "GMM", "N(0, I) − GMM"),),
        what="Fréchet distance in the reference classifier's features, sampling N(0, I) vs a GMM on the codes",
    ),
}


def _value(c: Contrast, v: float) -> str:
    return f"{v:.1%}" if c.percent else fmt(v)


def _head(c: Contrast, sub: pd.DataFrame, baselines: list[Baseline]) -> str:
    """What was measured, setting by setting (means over seeds)."""
    parts = []
    for z, g in sub.groupby(c.over):
        against = ", ".join(f"{_value(c, g[b.column].mean())} {b.words}" for b in baselines)
        parts.append(f"{c.over} {z:g}: {_value(c, g[c.metric].mean())} {c.words} vs {against}")
    return f"{c.what} — {'; '.join(parts)}" + (c.notes(sub) if c.notes else "")


def contrast_finding(c: Contrast, ds: str, sub: pd.DataFrame) -> Finding:
    """One Contrast on one dataset's runs."""
    claim = c.text.format(ds=ds)
    if any(b.required and (b.column not in sub or sub[b.column].isna().any()) for b in c.baselines):
        return Finding(claim, c.missing, UNKNOWN, topic=c.topic, dataset=ds)
    baselines = [b for b in c.baselines if b.column in sub and sub[b.column].notna().all()]
    head = _head(c, sub, baselines)
    gaps = [(b, c.sign * (sub[c.metric] - sub[b.column]) * c.scale) for b in baselines]
    k = min_seeds(sub, [c.over])
    if k < MIN_SEEDS:
        first = gaps[0][1]
        if c.lean_from is not None:
            m = float(first.mean())
            lean = HOLDS if m >= c.lean_from else FAILS if m <= 0 else MIXED
            rule = f"; 'holds' from {fmt(c.lean_from)} {c.unit} above {baselines[0].name}"
        else:
            wins = int((first > 0).sum())
            lean, rule = (HOLDS if wins == len(first) else FAILS if wins == 0 else MIXED), ""
        return means_only(claim, f"{head}{rule}{no_stats_note(k)}.", lean, c.topic, ds)
    delta = c.scale * DELTA_SHARE * abs(float(sub[c.metric].mean()))
    tests, words = [], []
    for group, (b, gap) in enumerate(gaps):
        eff = paired(gap.groupby(sub["seed"]).mean(), "paired t-test over seeds")
        words.append(f"{c.words} minus {b.name}, averaged over {c.over} within each seed: {eff.text(c.unit)}")
        tests.append(effect_test(eff, +1, delta, c.unit, group, b.label))
    return tested(claim, f"{head}; {'; '.join(words)}.", tests, "all", c.topic, ds)


def contrast_findings(c: Contrast, rows: pd.DataFrame | None) -> list[Finding]:
    """A Contrast on every dataset whose runs have its metric, each with its cells' convergence."""
    if rows is None or c.metric not in rows:
        return []
    return [
        converged([contrast_finding(c, ds, sub)], sub)[0]
        for ds, sub in rows.dropna(subset=[c.metric]).groupby("dataset")
    ]

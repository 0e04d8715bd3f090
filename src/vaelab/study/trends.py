"""Trend claims as data: a metric's claimed direction along a sweep axis (latent size, β), tested shape before slope with the seed as the replicate, against a smallest effect δ from the data's own scale."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vaelab.study.stats import ALPHA, MIN_SEEDS, adjacent_steps, fmt, fmt_p, holm_adjusted, lack_of_fit, seed_slopes
from vaelab.study.verdicts import (
    FAILS,
    HOLDS,
    MIXED,
    RULES,
    UNKNOWN,
    Finding,
    converged,
    effect_test,
    means_only,
    min_seeds,
    no_stats_note,
    tested,
)

# The smallest effect of interest δ: a share of the quantity's own level (its mean over the runs compared), per
# doubling of the setting for a trend. An effect shown (two one-sided tests) to move a quantity by less than 1 % of
# its level per doubling is no effect; docs/studies.md gives the reasons and why not the seeds' sd.
DELTA_SHARE = 0.01


def smallest_effect(rows: pd.DataFrame, metric: str, level: float | None = None) -> float:
    """δ of `metric` on these runs: DELTA_SHARE of its mean level (or of `level`, e.g. a baseline's)."""
    return DELTA_SHARE * abs(float(rows[metric].mean() if level is None else level))


@dataclass(frozen=True)
class Trend:
    """A claim that metrics move one way along a sweep axis: (column, the sign of its change as the setting grows)
    for each metric, how their outcomes combine (verdicts.RULES), the unit and the claim's text ({ds}: dataset)."""

    topic: str
    axis: str
    metrics: tuple[tuple[str, int], ...]
    text: str
    rule: str = "single"
    unit: str = ""
    last_gain: bool = False  # also say where the (single) metric last improved significantly


def _curve(sub: pd.DataFrame, axis: str, metric: str, sign: int, unit: str, group: int) -> tuple[str, list]:
    """One metric along the axis, with the seed as the replicate: a slope per doubling where a straight line in
    log2(setting) fits, else the steps between adjacent settings (one test each, paired by seed)."""
    x, y, seed = sub[axis].to_numpy(float), sub[metric].to_numpy(float), sub["seed"].to_numpy()
    delta = smallest_effect(sub, metric)
    p_lof = lack_of_fit(x, y, seed)
    per = f"{unit} per doubling" if unit else "per doubling"
    if p_lof == p_lof and p_lof < ALPHA:
        steps = adjacent_steps(x, y, seed)
        tests = [
            effect_test(e, sign, delta * math.log2(b / a), unit, group, f"{metric} {a:g}→{b:g}") for a, b, e in steps
        ]
        words = ", ".join(f"{a:g}→{b:g} {e.text(unit)}" for a, b, e in steps)
        text = (
            f"{metric}: a straight line in log2({axis}) does not fit (lack of fit against one mean per setting, "
            f"p {fmt_p(p_lof)}), so each step is tested, paired by seed (the same data order): {words}"
        )
        return text, tests
    e = seed_slopes(x, y, seed)
    fits = f"the line fits: lack of fit p {fmt_p(p_lof)}" if p_lof == p_lof else "two settings"
    text = f"{metric}: slope per doubling of {axis}, one per seed ({fits}): {e.text(per)}"
    return text, [effect_test(e, sign, delta, per, group, f"{metric} per doubling of {axis}")]


def trend_finding(trend: Trend, ds: str, sub: pd.DataFrame) -> list[Finding]:
    """A Trend claim on one dataset's runs: shape before slope for each metric, the outcomes combined by its rule."""
    claim, metrics = trend.text.format(ds=ds), [m for m, _ in trend.metrics]
    means = sub.groupby(trend.axis)[metrics].mean().sort_index()
    if len(means) < 2:
        return [Finding(claim, f"needs at least two values of {trend.axis}", UNKNOWN, topic=trend.topic, dataset=ds)]
    settings = ", ".join(f"{v:g}" for v in means.index)
    head = "; ".join(f"{m} " + " → ".join(fmt(v) for v in means[m]) for m in metrics)
    head += f" as {trend.axis} goes {settings} (means over seeds)"
    k = min_seeds(sub, [trend.axis])
    if k < MIN_SEEDS:
        signs = []
        for m, sign in trend.metrics:
            ends = np.sign(means[m].iloc[-1] - means[m].iloc[0]) * sign
            monotone = all(np.sign(b - a) * sign > 0 for a, b in zip(means[m].iloc[:-1], means[m].iloc[1:]))
            signs.append(HOLDS if ends > 0 and monotone else MIXED if ends > 0 else FAILS)
        return [means_only(claim, f"{head}{no_stats_note(k)}.", RULES[trend.rule](signs), trend.topic, ds)]
    parts, tests = [], []
    for group, (m, sign) in enumerate(trend.metrics):
        text, t = _curve(sub, trend.axis, m, sign, trend.unit, group)
        parts.append(text)
        tests += t
    if trend.last_gain and len(tests) == 1:
        parts.append(last_gain(sub, trend.axis, *trend.metrics[0]))
    evidence = f"{head}; " + "; ".join(parts) + "."
    return [tested(claim, evidence, tests, trend.rule, trend.topic, ds)]


def trend_findings(trend: Trend, rows: pd.DataFrame | None, skip_single: bool = False) -> list[Finding]:
    """A Trend claim on every dataset of `rows` that has its metrics (a run without them says nothing); with
    `skip_single`, a dataset run at one setting only is left out instead of 'needs two values'."""
    metrics = [m for m, _ in trend.metrics]
    if rows is None or len(rows) == 0 or not set(metrics) <= set(rows.columns):
        return []
    out = []
    for ds, sub in rows.dropna(subset=metrics).groupby("dataset"):
        if skip_single and sub[trend.axis].nunique() < 2:
            continue
        out += converged(trend_finding(trend, ds, sub), sub)
    return out


def last_gain(sub: pd.DataFrame, axis: str, metric: str, sign: int) -> str:
    """Where a metric stops improving along the axis: the steps between consecutive settings paired by seed,
    Holm-adjusted within the curve, and the largest setting whose step is a significant change as claimed."""
    steps = adjacent_steps(sub[axis].to_numpy(float), sub[metric].to_numpy(float), sub["seed"].to_numpy())
    adjusted = holm_adjusted([e.p for _, _, e in steps])
    last = None
    for (_, b, e), p in zip(steps, adjusted):
        if p < ALPHA and np.sign(e.estimate) == sign:
            last = b
    words = ", ".join(f"{a:g}→{b:g} {fmt(e.estimate)} (Holm p {fmt_p(p)})" for (a, b, e), p in zip(steps, adjusted))
    where = f"the last significant step as claimed ends at {axis} {last:g}" if last else "no step is significant"
    return f"{where} (change per step, paired by seed, Holm-adjusted within the curve: {words})"

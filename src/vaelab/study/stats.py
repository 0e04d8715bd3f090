"""The statistics behind findings: effects with 95 % intervals, paired, unpaired and per-seed tests, trends and their shape, equivalence (TOST), Holm and the ICC."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds per cell: no confidence intervals, no verdict


@dataclass(frozen=True)
class Effect:
    """An estimated effect with its 95 % confidence interval and the p-value of a test of 'no effect'."""

    estimate: float
    lo: float
    hi: float
    p: float
    n: int
    test: str
    se: float = math.nan  # standard error of the estimate and its t degrees of freedom: for equivalence tests
    df: float = 0

    def sign(self, claimed: int) -> int:
        """+1: significant in the claimed direction; -1: significant against it; 0: not significant."""
        if self.p < ALPHA and self.estimate != 0:
            return 1 if np.sign(self.estimate) == claimed else -1
        return 0

    def text(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        return (
            f"{fmt(self.estimate)}{u}, 95 % CI [{fmt(self.lo)}, {fmt(self.hi)}], {self.test} p {fmt_p(self.p)}, "
            f"n = {self.n}"
        )


def fmt(x: float) -> str:
    if x != x:
        return "nan"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def _t(df: float) -> float:
    return float(stats.t.ppf(1 - ALPHA / 2, df))


def paired(diffs, test: str = "paired t-test") -> Effect:
    """Mean of paired differences (one per seed), t interval and one-sample t-test."""
    d = np.asarray(diffs, dtype=float)
    n, m = len(d), float(np.mean(d)) if len(d) else math.nan
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    if n > 1 and sd <= 1e-9 * max(1.0, abs(m)):
        sd = 0.0  # equal up to rounding
    if n < 2 or not sd > 0:  # identical differences: no spread to test against
        p = 0.0 if n >= MIN_SEEDS and m != 0 and sd == 0 else 1.0
        return Effect(m, m, m, p, n, test, 0.0 if sd == 0 else math.nan, max(n - 1, 0))
    se = sd / math.sqrt(n)
    half = _t(n - 1) * se
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # near-equal values: sd handled above
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return Effect(m, m - half, m + half, p, n, test, se, n - 1)


def mean_interval(values) -> Effect:
    """Mean and t interval (no test)."""
    v = np.asarray(values, dtype=float)
    n, m = len(v), float(np.mean(v))
    sd = float(np.std(v, ddof=1)) if n > 1 else 0.0
    half = _t(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return Effect(m, m - half, m + half, math.nan, n, "t interval", sd / math.sqrt(n) if n > 1 else math.nan, n - 1)


def welch(a, b) -> Effect:
    """mean(a) - mean(b) of two independent samples: Welch's t-test and interval (unequal variances)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    m = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if not se > 0:
        return Effect(m, m, m, 0.0 if m else 1.0, len(a) + len(b), "Welch t-test", 0.0, len(a) + len(b) - 2)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    with warnings.catch_warnings(action="ignore", category=RuntimeWarning):  # one sample of near-equal values
        p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    half = _t(df) * se
    return Effect(m, m - half, m + half, p, len(a) + len(b), "Welch t-test", se, df)


def per_seed(rows: pd.DataFrame, value: str, by: str = "seed") -> pd.Series:
    """One value per seed: the mean over the conditions (latent sizes, β) a seed was run at. The seed is the
    replicate; conditions are never extra samples."""
    return rows.groupby(by)[value].mean()


def seed_slopes(x, y, seed) -> Effect:
    """Trend per doubling of the setting with the seed as the replicate: each seed's least-squares slope of y on
    log2(x) (latent sizes and β are spaced geometrically), then a one-sample t-test of the seeds' slopes."""
    frame = pd.DataFrame({"lx": np.log2(np.asarray(x, dtype=float)), "y": np.asarray(y, dtype=float), "s": seed})
    slopes = [
        float(stats.linregress(g["lx"], g["y"]).slope)
        for _, g in frame.groupby("s")
        if g["lx"].nunique() >= 2 and len(g) >= 2
    ]
    if not slopes:
        return Effect(math.nan, math.nan, math.nan, 1.0, 0, "per-seed slopes, t-test")
    return paired(slopes, "per-seed slopes, t-test")


def lack_of_fit(x, y, seed) -> float:
    """p of the lack-of-fit F-test of a straight line in log2(x): y ~ seed + log2(x) against y ~ seed + one mean per
    setting (statsmodels OLS compare_f_test), the seeds as blocks. NaN with fewer than three settings (a line then
    fits by construction) or no replicate left to estimate the error."""
    x = np.asarray(x, dtype=float)
    settings = np.unique(x)
    if len(settings) < 3:
        return math.nan
    seeds = pd.get_dummies(pd.Series(seed).astype(str), drop_first=True, dtype=float).to_numpy()
    line = np.column_stack([np.ones(len(x)), seeds, np.log2(x)])
    means = np.column_stack([seeds, (x[:, None] == settings[None, :]).astype(float)])
    y = np.asarray(y, dtype=float)
    full, reduced = sm.OLS(y, means).fit(), sm.OLS(y, line).fit()
    if full.df_resid < 1:
        return math.nan
    if not full.ssr > 1e-12 * max(1.0, float(np.sum(y**2))):  # the setting means fit exactly
        return 0.0 if reduced.ssr > 1e-9 * max(1.0, float(np.sum(y**2))) else 1.0
    return float(full.compare_f_test(reduced)[1])


def adjacent_steps(x, y, seed) -> list[tuple[float, float, Effect]]:
    """Each step between consecutive settings, y(b) - y(a), paired by seed (runs of one seed share the data order)."""
    wide = pd.DataFrame({"x": np.asarray(x, dtype=float), "y": np.asarray(y, dtype=float), "s": seed})
    wide = wide.pivot_table(index="s", columns="x", values="y")
    cols = sorted(wide.columns)
    return [(a, b, paired((wide[b] - wide[a]).dropna())) for a, b in zip(cols[:-1], cols[1:])]


def tost(eff: Effect, delta: float) -> float:
    """p of the two one-sided t-tests (Schuirmann 1987) that the effect lies within ±delta: the larger p of
    'effect <= -delta' and 'effect >= delta', from the estimate's standard error and t degrees of freedom (for
    paired differences the same as statsmodels' ttost_paired, tested). NaN when it cannot be computed."""
    if not delta > 0 or eff.estimate != eff.estimate:
        return math.nan
    if eff.se == 0:  # no spread: within the bound or not, for certain
        return 0.0 if abs(eff.estimate) < delta else 1.0
    if not (eff.se > 0 and eff.df > 0):
        return math.nan
    below = stats.t.sf((eff.estimate + delta) / eff.se, eff.df)  # H0: effect <= -delta
    above = stats.t.cdf((eff.estimate - delta) / eff.se, eff.df)  # H0: effect >= +delta
    return float(max(below, above))


def holm_adjusted(ps: list[float]) -> list[float]:
    """Holm-adjusted p (statsmodels) of the finite p-values among `ps`; NaN stays NaN."""
    finite = [i for i, p in enumerate(ps) if p == p]
    out = [math.nan] * len(ps)
    if finite:
        for i, a in zip(finite, multipletests([ps[i] for i in finite], alpha=ALPHA, method="holm")[1]):
            out[i] = float(a)
    return out


def share_over_seeds(shares) -> Effect:
    """A proportion with the seed as the replicate: the mean of the seeds' shares and its t interval, clipped to
    [0, 1] (units of one model are not independent trials, so no binomial interval over pooled units)."""
    e = mean_interval(shares)
    return Effect(e.estimate, max(0.0, e.lo), min(1.0, e.hi), math.nan, e.n, "t interval over seeds", e.se, e.df)


def icc(groups: list[np.ndarray]) -> Effect:
    """Intra-class correlation ICC(1) of a one-way random-effects model (Shrout & Fleiss 1979): the share of the
    variance that lies between groups, with its exact 95 % interval from the F distribution and the F-test of
    ICC = 1/2 (between-group variance equal to the within-group one: under it MSB/MSW ~ (1 + k0) F(g-1, N-g),
    k0 the effective group size of unbalanced groups). The estimate is ICC - 1/2, so its sign says which is larger."""
    sizes = np.array([len(x) for x in groups], dtype=float)
    g, n = len(groups), float(sizes.sum())
    k0 = (n - (sizes**2).sum() / n) / (g - 1)
    f_obs = float(stats.f_oneway(*groups).statistic)  # MSB / MSW
    d1, d2 = g - 1, int(n) - g
    if not math.isfinite(f_obs):  # no spread within groups
        return Effect(0.5, 0.5, 0.5, 0.0, int(n), "ICC F-test of 1/2")
    value = (f_obs - 1) / (f_obs + k0 - 1)
    f_lo, f_hi = f_obs / stats.f.ppf(1 - ALPHA / 2, d1, d2), f_obs * stats.f.ppf(1 - ALPHA / 2, d2, d1)
    lo, hi = (f_lo - 1) / (f_lo + k0 - 1), (f_hi - 1) / (f_hi + k0 - 1)
    at_half = f_obs / (1 + k0)
    p = min(1.0, 2 * min(stats.f.sf(at_half, d1, d2), stats.f.cdf(at_half, d1, d2)))
    return Effect(float(value - 0.5), float(lo - 0.5), float(hi - 0.5), float(p), int(n), "ICC F-test of 1/2")

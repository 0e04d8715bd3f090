"""The study's claims, checked against measured results: each finding states its evidence, statistics and a verdict.

Findings read per-run rows (one per trained cell), never pre-averaged tables, so that with three or more seeds per
cell each claim gets a 95 % confidence interval of the effect it states and a test suited to it: paired across
seeds for two settings, a regression slope on log2 of the setting for a trend over latent sizes or β. A claim
*holds* only when its effect has the claimed sign and is significant (p < 0.05); *inconclusive* when the data
cannot tell; *does not hold* only when the effect is significant the other way. With fewer seeds there is no
verdict (*not enough data*): the evidence shows the means and which way they lean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from . import data as vdata
from .config import FIELDS
from .errors import VaelabError
from .losses import OBJECTIVES, objective_entry

HOLDS, FAILS, MIXED, INCONCLUSIVE, UNKNOWN = "holds", "does not hold", "partly holds", "inconclusive", "not enough data"
VERDICTS = (HOLDS, MIXED, FAILS, INCONCLUSIVE, UNKNOWN)
MIN_SEEDS = 3  # fewer seeds per cell: no confidence intervals
ALPHA = 0.05
ORGANISATION_MARGIN = 0.02  # without statistics: the probe must beat the untrained encoder by 2 points to 'hold'
# The smallest effect of interest of each kind of finding: an effect shown (two one-sided tests) to lie within it is
# "no effect"; one neither significant nor shown negligible is inconclusive.
DELTA = {
    "per_dim": 0.05,  # bits (or nats) per dimension between the datasets
    "recon_share": 0.005,  # a reconstruction slope of 0.5 % of the mean reconstruction term per doubling
    "kl": 1.0,  # nats of KL per doubling of the latent size
    "probe_accuracy": 0.005,  # half a point of accuracy per doubling of β
    "knn_accuracy": 0.005,
    "silhouette": 0.01,
    "points": 1.0,  # one point of probe accuracy between encoders
    "mig": 0.01,  # per doubling of β
    "dci_disentanglement": 0.01,
}


@dataclass(frozen=True)
class Finding:
    claim: str
    evidence: str
    verdict: str
    # the tests behind the verdict, (p, direction): direction +1 when the estimate has the claimed sign, -1 when
    # it has the other, 0 when it is zero; `rule` makes their signs a verdict (RULES). A study's findings are one
    # family: holm() decides every verdict again from Holm-adjusted p-values.
    tests: tuple[tuple[float, int], ...] = ()
    rule: str = "single"
    # the verdict at each fraction of the training budget, (fraction, verdict), the last one at 1 (along_training)
    along: tuple[tuple[float, str], ...] = ()


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
    df: int = 0

    def sign(self, claimed: int) -> int:
        """+1: significant in the claimed direction; -1: significant against it; 0: not significant."""
        if self.p < ALPHA and self.estimate != 0:
            return 1 if np.sign(self.estimate) == claimed else -1
        return 0

    def text(self, unit: str = "") -> str:
        u = f" {unit}" if unit else ""
        return (
            f"{_f(self.estimate)}{u}, 95 % CI [{_f(self.lo)}, {_f(self.hi)}], {self.test} p {_p(self.p)}, n = {self.n}"
        )


def _t(n_df: int) -> float:
    return float(stats.t.ppf(1 - ALPHA / 2, n_df))


def paired(diffs) -> Effect:
    """Mean of paired differences, t interval and one-sample t-test (differences across seeds)."""
    d = np.asarray(diffs, dtype=float)
    n, m = len(d), float(np.mean(d))
    sd = float(np.std(d, ddof=1)) if n > 1 else math.nan
    if n > 1 and sd <= 1e-9 * max(1.0, abs(m)):
        sd = 0.0  # equal up to rounding
    if n < 2 or not sd > 0:  # identical differences: no spread to test against
        p = 0.0 if n >= MIN_SEEDS and m != 0 and sd == 0 else 1.0
        return Effect(m, m, m, p, n, "paired t-test", 0.0 if sd == 0 else math.nan, max(n - 1, 0))
    se = sd / math.sqrt(n)
    half = _t(n - 1) * se
    return Effect(m, m - half, m + half, float(stats.ttest_1samp(d, 0.0).pvalue), n, "paired t-test", se, n - 1)


def mean_interval(values) -> Effect:
    v = np.asarray(values, dtype=float)
    n, m = len(v), float(np.mean(v))
    sd = float(np.std(v, ddof=1)) if n > 1 else 0.0
    half = _t(n - 1) * sd / math.sqrt(n) if n > 1 else 0.0
    return Effect(m, m - half, m + half, math.nan, n, "t interval")


def trend(x, y) -> Effect:
    """Least-squares slope of y on log2(x) (latent sizes and β are spaced geometrically), its t interval and
    the test of zero slope, over every (setting, seed) run."""
    lx, y = np.log2(np.asarray(x, dtype=float)), np.asarray(y, dtype=float)
    n = len(y)
    if n < 3 or len(np.unique(lx)) < 2:
        return Effect(math.nan, math.nan, math.nan, 1.0, n, "slope test")
    r = stats.linregress(lx, y)
    if not r.stderr > 0:  # a perfect line
        s = float(r.slope)
        return Effect(s, s, s, 0.0 if r.slope else 1.0, n, "slope test", 0.0, n - 2)
    half = _t(n - 2) * r.stderr
    return Effect(float(r.slope), r.slope - half, r.slope + half, float(r.pvalue), n, "slope test", r.stderr, n - 2)


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


def verdict_of(sign: int) -> str:
    return HOLDS if sign > 0 else FAILS if sign < 0 else INCONCLUSIVE


class Test(NamedTuple):
    """One test behind a verdict: p of 'no effect' and the estimate's direction (+1 as claimed, -1 against, 0 none);
    where the finding states a smallest effect of interest, the p of the equivalence test (tost) that the effect lies
    within it, and that bound in words."""

    p: float
    direction: int
    p_equiv: float = math.nan
    within: str = ""


NEGLIGIBLE = -2  # a test's sign when the effect is shown to lie within the smallest effect of interest


def effect_test(eff: Effect, claimed: int, delta: float = math.nan, unit: str = "") -> Test:
    """An effect as a Test of Finding.tests; with `delta` (the smallest effect of interest, in `unit`) also its
    equivalence test."""
    within = f"±{_f(delta)}{' ' + unit if unit else ''}" if delta > 0 else ""
    if not eff.estimate or eff.estimate != eff.estimate:
        return Test(eff.p, 0, tost(eff, delta), within)
    return Test(eff.p, 1 if np.sign(eff.estimate) == claimed else -1, tost(eff, delta), within)


def _significant(p: float, direction: int, p_equiv: float = math.nan) -> int:
    """+1 / -1: significant for / against the claim; NEGLIGIBLE: not significant, and shown to be within the
    smallest effect of interest (every rule counts it against the claim: no effect); 0: the data cannot tell."""
    if p < ALPHA:
        return direction
    return NEGLIGIBLE if p_equiv < ALPHA else 0


def _negligible_text(tests: list[Test], signs: list[int], p_equivs: list[float]) -> str:
    parts = [
        f"within {t.within} (two one-sided tests, p {_p(pe)})"
        for t, s, pe in zip(tests, signs, p_equivs)
        if s == NEGLIGIBLE
    ]
    return f" No effect: {'; '.join(parts)}." if parts else ""


def _all(signs: list[int]) -> str:
    """Every part as claimed -> holds; any significantly against -> does not hold; some -> partly."""
    if signs and all(s > 0 for s in signs):
        return HOLDS
    if any(s < 0 for s in signs):
        return FAILS
    return MIXED if any(s > 0 for s in signs) else INCONCLUSIVE


def _combine(signs: list[int]) -> str:
    """Verdict over the claim's metrics: all for it -> holds; some -> partly; none for and some against -> does not
    hold; else inconclusive."""
    if signs and all(s > 0 for s in signs):
        return HOLDS
    if any(s > 0 for s in signs):
        return MIXED
    return FAILS if any(s < 0 for s in signs) else INCONCLUSIVE


RULES = {"single": lambda signs: verdict_of(signs[0]), "all": _all, "combine": _combine}


def tested(claim: str, evidence: str, tests: list, rule: str = "single") -> Finding:
    """A finding whose verdict its tests (Test, or (p, direction) pairs) decide, at the unadjusted level until
    holm() adjusts the family."""
    tests = [Test(*t) for t in tests]
    signs = _signs(tests, [t.p for t in tests], [t.p_equiv for t in tests])
    evidence += _negligible_text(tests, signs, [t.p_equiv for t in tests])
    return Finding(claim, evidence, RULES[rule](signs), tuple(tests), rule)


def holm(findings: list[Finding]) -> list[Finding]:
    """The study's findings as one family: every test's p adjusted by Holm's step-down method (statsmodels), the
    equivalence tests' p as a family of their own, each verdict decided again from the adjusted p-values, and the
    evidence showing them beside the raw ones."""
    tests = [t for f in findings for t in f.tests]
    if not tests:
        return findings
    adjusted = iter(_holm_adjusted([t.p for t in tests]))
    equiv = iter(_holm_adjusted([t.p_equiv for t in tests]))
    out = []
    for f in findings:
        if not f.tests:
            out.append(f)
            continue
        adj = [float(next(adjusted)) for _ in f.tests]
        adj_equiv = [float(next(equiv)) for _ in f.tests]
        signs = _signs(f.tests, adj, adj_equiv)
        text = ", ".join(f"{_p(a).removeprefix('= ')}" for a in adj)
        # the evidence as tested() wrote it, less its unadjusted 'no effect' sentence: the adjusted one replaces it
        raw_equiv = [t.p_equiv for t in f.tests]
        raw = _signs(f.tests, [t.p for t in f.tests], raw_equiv)
        base = f.evidence.removesuffix(_negligible_text(list(f.tests), raw, raw_equiv))
        evidence = f"{base} Holm-adjusted p over the study's {len(tests)} tests: {text}." if len(tests) > 1 else base
        evidence += _negligible_text(list(f.tests), signs, adj_equiv)
        out.append(Finding(f.claim, evidence, RULES[f.rule](signs), f.tests, f.rule, f.along))
    return out


def _signs(tests, ps: list[float], p_equivs: list[float]) -> list[int]:
    """Each test's sign (_significant) at the given p-values: raw ones, or Holm-adjusted ones."""
    return [_significant(p, t.direction, e) for t, p, e in zip(tests, ps, p_equivs)]


def _holm_adjusted(ps: list[float]) -> list[float]:
    """Holm-adjusted p (statsmodels) of the finite p-values among `ps`; NaN stays NaN."""
    finite = [i for i, p in enumerate(ps) if p == p]
    out = [math.nan] * len(ps)
    if finite:
        for i, a in zip(finite, multipletests([ps[i] for i in finite], alpha=ALPHA, method="holm")[1]):
            out[i] = float(a)
    return out


def _f(x: float) -> str:
    if x != x:
        return "nan"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def _steps(values: list[float], decreasing: bool) -> tuple[int, int]:
    """How many consecutive steps move in the claimed direction, of how many."""
    pairs = list(zip(values[:-1], values[1:]))
    ok = sum((b < a) if decreasing else (b > a) for a, b in pairs)
    return ok, len(pairs)


def min_seeds(rows: pd.DataFrame, by: list[str]) -> int:
    return int(rows.groupby(by).size().min()) if len(rows) else 0


def no_stats_note(k: int) -> str:
    return (
        f" (means over {k} seed{'s' if k != 1 else ''} per setting: no confidence interval or test; "
        f"{MIN_SEEDS} or more seeds give them)"
    )


def means_only(claim: str, evidence: str, lean: str) -> Finding:
    """Fewer than MIN_SEEDS seeds: no verdict. The evidence shows the means and which way they lean."""
    return Finding(claim, f"{evidence} Not enough data for a verdict; the means alone lean '{lean}'.", UNKNOWN)


def share_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval of a proportion k / n: always inside [0, 1] (scipy.stats.binomtest)."""
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return float(ci.low), float(ci.high)


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


# ---------------------------------------------------------------- the claims


def dataset_complexity(latent: pd.DataFrame) -> list[Finding]:
    claim = "Fashion-MNIST is easier to model than CIFAR-10 (lower negative ELBO per dimension)."
    if not {"fashion-mnist", "cifar10"} <= set(latent.get("dataset", [])):
        return [Finding(claim, "needs finished runs of both datasets", UNKNOWN)]
    rows = latent[latent["dataset"].isin(["fashion-mnist", "cifar10"])].copy()
    unit = per_dim(rows)
    if unit is None:
        return [
            Finding(
                claim,
                "the runs mix discrete and continuous likelihoods, whose values per dimension do not "
                "compare (or eval.json lacks n_dims: re-evaluate)",
                UNKNOWN,
            )
        ]
    rows["per_dim"], unit_name = unit
    piv = rows.pivot_table(index=["latent_dim", "seed"], columns="dataset", values="per_dim").dropna()
    if piv.empty:
        return [Finding(claim, "no latent size and seed was run on both datasets", UNKNOWN)]
    sizes = sorted(piv.index.get_level_values(0).unique())
    k = int(piv.groupby(level=0).size().min())
    fm, c10 = piv["fashion-mnist"].mean(), piv["cifar10"].mean()
    head = (
        f"{_f(fm)} vs {_f(c10)} {unit_name} (Fashion-MNIST vs CIFAR-10, mean over latent sizes "
        f"{', '.join(map(str, sizes))})"
    )
    if k >= MIN_SEEDS:
        eff = paired(piv["cifar10"] - piv["fashion-mnist"])
        return [
            tested(
                claim,
                f"{head}; CIFAR-10 minus Fashion-MNIST, paired by latent size and seed: {eff.text(unit_name)}.",
                [effect_test(eff, +1, DELTA["per_dim"], unit_name)],
            )
        ]
    means = piv.groupby(level=0).mean()
    wins = int((means["fashion-mnist"] < means["cifar10"]).sum())
    verdict = HOLDS if wins == len(means) else FAILS if wins == 0 else MIXED
    return [
        means_only(claim, f"{head}; Fashion-MNIST lower at {wins} of {len(means)} sizes{no_stats_note(k)}.", verdict)
    ]


def latent_size(latent: pd.DataFrame) -> list[Finding]:
    out = []
    for ds, sub in latent.dropna(subset=["recon"]).groupby("dataset"):  # a run without its scores says nothing
        claim = f"{ds}: larger latent sizes improve reconstruction."
        means = sub.groupby("latent_dim")["recon"].mean().sort_index()
        if len(means) < 2:
            out.append(Finding(claim, "needs at least two latent sizes", UNKNOWN))
            continue
        r, lo, hi = list(means), means.index[0], means.index[-1]
        head = f"reconstruction {'falls' if r[-1] < r[0] else 'rises'} from {_f(r[0])} to {_f(r[-1])} nats as latent_dim goes {lo}→{hi}"
        k = min_seeds(sub, ["latent_dim"])
        if k >= MIN_SEEDS:
            eff = trend(sub["latent_dim"], sub["recon"])
            text = f"{head}; slope per doubling of latent_dim: {eff.text('nats')}; {_last_gain(sub, 'recon')}."
            delta = DELTA["recon_share"] * abs(float(sub["recon"].mean()))
            out.append(tested(claim, text, [effect_test(eff, -1, delta, "nats per doubling")]))
        else:
            steps, n = _steps(r, decreasing=True)
            verdict = HOLDS if r[-1] < r[0] and steps == n else MIXED if r[-1] < r[0] else FAILS
            out.append(means_only(claim, f"{head}, monotone in {steps} of {n} steps{no_stats_note(k)}.", verdict))
        out += _collapse(ds, sub)
    return out


def _last_gain(sub: pd.DataFrame, metric: str) -> str:
    """Where a metric stops improving (falling) with latent size: each step between consecutive sizes paired by
    seed, and the largest size whose step is a significant gain."""
    sizes = sorted(sub["latent_dim"].unique())
    wide = sub.pivot_table(index="seed", columns="latent_dim", values=metric).reindex(columns=sizes)
    steps, last = [], None
    for a, b in zip(sizes[:-1], sizes[1:]):
        eff = paired((wide[a] - wide[b]).dropna())
        steps.append(f"{a}→{b} {_f(eff.estimate)} (p {_p(eff.p)})")
        if eff.p < ALPHA and eff.estimate > 0:
            last = b
    where = f"the last significant gain is at latent_dim {last}" if last else "no step between sizes is significant"
    return f"{where} (gain per step, paired by seed: {', '.join(steps)})"


def compression_cost(latent: pd.DataFrame) -> list[Finding]:
    """Claim 2's other half: a larger latent space costs compression — the rate (KL) rises with latent size."""
    out = []
    for ds, sub in latent.dropna(subset=["kl"]).groupby("dataset"):
        claim = f"{ds}: a larger latent space costs compression (the KL, the code's rate, rises with latent size)."
        means = sub.groupby("latent_dim")["kl"].mean().sort_index()
        if len(means) < 2:
            continue
        kl = list(means)
        head = f"KL {_f(kl[0])} → {_f(kl[-1])} nats as latent_dim goes {means.index[0]}→{means.index[-1]}"
        k = min_seeds(sub, ["latent_dim"])
        if k >= MIN_SEEDS:
            eff = trend(sub["latent_dim"], sub["kl"])
            out.append(
                tested(
                    claim,
                    f"{head}; slope per doubling of latent_dim: {eff.text('nats')}.",
                    [effect_test(eff, +1, DELTA["kl"], "nats per doubling")],
                )
            )
        else:
            steps, n = _steps(kl, decreasing=False)
            lean = HOLDS if kl[-1] > kl[0] and steps == n else MIXED if kl[-1] > kl[0] else FAILS
            out.append(means_only(claim, f"{head}, rising in {steps} of {n} steps{no_stats_note(k)}.", lean))
    return out


def beta_organisation(beta: pd.DataFrame) -> list[Finding]:
    """Claim 4's other half: larger β gives a more organised latent space — the linear probe, k-NN accuracy and
    the silhouette of the codes' classes against β (slopes per doubling), at the β sweep's latent size."""
    out = []
    metrics = [m for m in ("probe_accuracy", "knn_accuracy", "silhouette") if beta is not None and m in beta]
    if not metrics:
        return out
    for ds, sub in beta.dropna(subset=metrics).groupby("dataset"):
        if sub["beta"].nunique() < 2:
            continue
        claim = f"{ds}: larger β gives a more organised latent space (probe, k-NN and silhouette rise with β)."
        k = min_seeds(sub, ["beta"])
        means = sub.groupby("beta")[metrics].mean().sort_index()
        head = "; ".join(f"{m} {_f(means[m].iloc[0])} → {_f(means[m].iloc[-1])}" for m in metrics)
        head += f" as β goes {means.index[0]:g}→{means.index[-1]:g}"
        if k >= MIN_SEEDS:
            effs = [trend(sub["beta"], sub[m]) for m in metrics]
            slopes = "; ".join(f"{m} {e.text()}" for m, e in zip(metrics, effs))
            out.append(
                tested(
                    claim,
                    f"{head}; slopes per doubling of β: {slopes}.",
                    [effect_test(e, +1, DELTA[m], "per doubling") for e, m in zip(effs, metrics)],
                    "combine",
                )
            )
        else:
            rises = [int(np.sign(means[m].iloc[-1] - means[m].iloc[0])) for m in metrics]
            out.append(means_only(claim, f"{head}{no_stats_note(k)}.", _combine(rises)))
    return out


def _collapse(ds: str, sub: pd.DataFrame) -> list[Finding]:
    au = sub.dropna(subset=["active_units"])
    if au.empty:
        return []
    claim = f"{ds}: a large latent space is not fully used (posterior collapse of unneeded units)."
    big = int(au["latent_dim"].max())
    frac = au[au["latent_dim"] == big]["active_units"] / big
    small = int(au["latent_dim"].min())
    tail = f"; at latent_dim {small}: {_f(au[au['latent_dim'] == small]['active_units'].mean())} active"
    # holds: under 90 % of the units active; partly: some units unused, but 90 % or more active; does not hold:
    # every unit active in every seed.
    if len(frac) >= MIN_SEEDS:
        active = int(round(float(frac.sum()) * big))
        lo, hi = share_interval(active, big * len(frac))  # Wilson, over every unit of every seed
        m = float(frac.mean())
        verdict = HOLDS if hi < 0.9 else FAILS if m >= 1.0 else MIXED if lo >= 0.9 else INCONCLUSIVE
        return [
            Finding(
                claim,
                f"share of active units at latent_dim {big}: {m:.0%} ({active} of {big * len(frac)} units over "
                f"{len(frac)} seeds), 95 % Wilson interval [{lo:.0%}, {hi:.0%}] ('holds' below 90 %){tail}.",
                verdict,
            )
        ]
    m = float(frac.mean())
    return [
        means_only(
            claim,
            f"{_f(m * big)} of {big} units active at latent_dim {big} ({m:.0%}; 'holds' below 90 %)"
            f"{tail}{no_stats_note(len(frac))}.",
            HOLDS if m < 0.9 else MIXED if m < 1.0 else FAILS,
        )
    ]


def beta_tradeoff(beta: pd.DataFrame) -> list[Finding]:
    if beta is None or len(beta) == 0:
        return [Finding("β trades reconstruction for a more compact code.", "no β sweep has finished", UNKNOWN)]
    out = []
    for ds, sub in beta.groupby("dataset"):
        claim = (
            f"{ds}: β trades reconstruction for a more compact code (less KL, worse reconstruction) — holds by "
            "construction of the β-weighted objective: a check that training did what it asks, not evidence "
            "about the data."
        )
        means = sub.groupby("beta")[["kl", "recon"]].mean().sort_index()
        if len(means) < 2:
            out.append(Finding(claim, "needs at least two values of β", UNKNOWN))
            continue
        kl, rec, b = list(means["kl"]), list(means["recon"]), list(means.index)
        head = f"as β goes {b[0]:g}→{b[-1]:g}: KL {_f(kl[0])}→{_f(kl[-1])} nats, reconstruction {_f(rec[0])}→{_f(rec[-1])} nats"
        k = min_seeds(sub, ["beta"])
        if k >= MIN_SEEDS:
            e_kl, e_rec = trend(sub["beta"], sub["kl"]), trend(sub["beta"], sub["recon"])
            out.append(
                tested(
                    claim,
                    f"{head}; slopes per doubling of β: KL {e_kl.text('nats')}; reconstruction {e_rec.text('nats')}.",
                    [effect_test(e_kl, -1), effect_test(e_rec, +1)],
                    "all",
                )
            )
            continue
        k1, n = _steps(kl, decreasing=True)
        k2, _ = _steps(rec, decreasing=False)
        kl_falls, rec_rises = kl[-1] < kl[0], rec[-1] > rec[0]
        # Both ends must move as claimed; a KL that falls while reconstruction *improves* is no trade-off.
        verdict = (
            HOLDS if kl_falls and rec_rises and k1 == n and k2 == n else MIXED if kl_falls and rec_rises else FAILS
        )
        out.append(
            means_only(
                claim,
                f"{head} (KL falls in {k1} of {n} steps, reconstruction rises in {k2} of {n}){no_stats_note(k)}.",
                verdict,
            )
        )
    return out


def organisation(latent: pd.DataFrame) -> list[Finding]:
    """'Training organises the latent space by class', against the same probe on the run's encoder at its initial
    weights (random conv features already separate classes) and on PCA of the pixels; over every latent size,
    paired by latent size and seed."""
    out = []
    if "probe_accuracy" not in latent:
        return out
    for ds, sub in latent.dropna(subset=["probe_accuracy"]).groupby("dataset"):
        claim = f"{ds}: training organises the latent space by class although no label was used."
        if "probe_accuracy_untrained" not in sub or sub["probe_accuracy_untrained"].isna().any():
            out.append(
                Finding(
                    claim,
                    "eval.json has no untrained-encoder baseline (evaluated by vaelab < 0.2): "
                    "re-run vaelab evaluate on these runs",
                    UNKNOWN,
                )
            )
            continue
        by = sub.groupby("latent_dim")
        sizes = "; ".join(
            f"latent_dim {int(z)}: {g['probe_accuracy'].mean():.1%} trained vs {g['probe_accuracy_untrained'].mean():.1%} "
            f"at initial weights, {g['probe_accuracy_pca'].mean() if 'probe_accuracy_pca' in g else math.nan:.1%} PCA"
            for z, g in by
        )
        chance = float(sub["chance_accuracy"].mean()) if "chance_accuracy" in sub else math.nan
        head = (
            f"linear-probe test accuracy on the codes vs the same encoder at its initial weights (untrained) and "
            f"PCA of the pixels to as many dimensions — {sizes}; chance (most frequent class) {chance:.1%}"
        )
        diff = (sub["probe_accuracy"] - sub["probe_accuracy_untrained"]) * 100
        k = min_seeds(sub, ["latent_dim"])
        if k >= MIN_SEEDS:
            out.append(_organisation_tested(claim, head, sub, diff))
        else:
            m = float(diff.mean()) / 100
            verdict = HOLDS if m >= ORGANISATION_MARGIN else FAILS if m <= 0 else MIXED
            out.append(
                means_only(
                    claim,
                    f"{head}; 'holds' from {ORGANISATION_MARGIN:.0%} above the untrained encoder{no_stats_note(k)}.",
                    verdict,
                )
            )
    return out


def _organisation_tested(claim: str, head: str, sub: pd.DataFrame, diff: pd.Series) -> Finding:
    """Claim 3 in full: the probe must beat both the untrained encoder and PCA of the pixels (two paired tests);
    the silhouette is reported as the clustering check it is, outside the verdict."""
    eff = paired(diff)
    text = f"{head}; trained minus untrained, paired by latent size and seed: {eff.text('points')}"
    tests = [effect_test(eff, +1, DELTA["points"], "points")]
    if "probe_accuracy_pca" in sub and sub["probe_accuracy_pca"].notna().all():
        pca = paired((sub["probe_accuracy"] - sub["probe_accuracy_pca"]) * 100)
        text += f"; trained minus PCA of the pixels: {pca.text('points')}"
        tests.append(effect_test(pca, +1, DELTA["points"], "points"))
    if "silhouette" in sub and sub["silhouette"].notna().any():
        text += f"; silhouette of the test codes' classes (a clustering check, not in the verdict) {_f(sub['silhouette'].mean())}"
    return tested(claim, text + ".", tests, "all")


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
        pairs = "; ".join(
            f"{_f(r.fd_prior)} → {_f(r.fd_gmm)} (latent_dim {int(r.latent_dim)}, seed {int(r.seed)})"
            for r in sub.itertuples()
        )
        head = f"Fréchet distance in the reference classifier's features, N(0, I) → GMM: {pairs}"
        if len(sub) >= MIN_SEEDS and sub["latent_dim"].nunique() == 1:
            eff = paired(sub["fd_prior"] - sub["fd_gmm"])
            out.append(tested(claim, f"{head}; N(0, I) minus GMM: {eff.text()}.", [effect_test(eff, +1)]))
        else:
            wins = int((sub["fd_gmm"] < sub["fd_prior"]).sum())
            out.append(
                means_only(
                    claim,
                    f"{head}{no_stats_note(len(sub)).replace('per setting', 'scored')}.",
                    HOLDS if wins == len(sub) else FAILS if wins == 0 else MIXED,
                )
            )
    for ds, sub in latent.dropna(subset=["conditional_accuracy"]).groupby("dataset"):
        out.append(_conditional(ds, sub))
    return out


def _conditional(ds: str, sub: pd.DataFrame) -> Finding:
    """Class-conditional generation at the latent size with the most scored seeds: 'holds' when the reference
    classifier labels significantly more than half the samples as the class asked for, 'partly' when only more
    than twice chance, 'does not hold' when significantly below half and not above twice chance."""
    claim = f"{ds}: the latent space supports class-conditional generation without retraining."
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
        return tested(claim, text, [effect_test(half, +1), effect_test(twice, +1)], "combine")
    a = float(acc.mean())
    lean = HOLDS if a >= 0.5 else MIXED if a > 2 * chance else FAILS
    return means_only(claim, f"{head}{no_stats_note(len(acc)).replace('per setting', 'scored')}.", lean)


# ---------------------------------------------------------------- model families (the `families` preset)

# The reference VAE. `arch` is the results' architecture label (study.results.arch_label): the model, or the VAE's
# network; `model` and `net` are the config fields it comes from.
REFERENCE = {
    "posterior": "gaussian",
    "prior": "standard",
    "objective": "elbo",
    "kl_schedule": "linear",
    "arch": "conv",
    "model": "vae",
    "net": "conv",
}
FAMILY_CLAIMS = [
    # (what differs from the reference, metric, sign of reference minus family that the claim predicts, claim)
    (
        {"posterior": "iaf"},
        "elbo_gap",
        +1,
        "a more flexible posterior (IAF) narrows the gap between the ELBO and the "
        "IWAE bound (the posterior's mismatch)",
    ),
    ({"prior": "vamp"}, "iwae_nll", +1, "a learned prior (VampPrior) lowers the negative log-likelihood (IWAE bound)"),
    (
        {"prior": "vamp"},
        "fd_prior",
        +1,
        "a learned prior (VampPrior) gives samples closer to the data (Fréchet "
        "distance of prior samples in the reference classifier's features)",
    ),
    ({"objective": "free_bits"}, "active_units", -1, "free bits keep more latent units active"),
    ({"kl_schedule": "cyclical"}, "active_units", -1, "cyclical KL annealing keeps more latent units active"),
    ({"arch": "resnet"}, "bpd_iwae", +1, "a residual network lowers bits/dim (IWAE) at the same training budget"),
    ({"arch": "hierarchical"}, "bpd_iwae", +1, "a hierarchical VAE lowers bits/dim (IWAE) at the same training budget"),
]


def family_rows(done: pd.DataFrame, change: dict) -> pd.DataFrame:
    """The rows (runs or summary rows) of the reference VAE with `change` applied; a column the table lacks
    counts as the reference's value."""
    # `arch` summarises `model` and `net`: a change to one side frees the reference's other side
    linked = {"arch": ("model", "net"), "model": ("arch",), "net": ("arch",)}
    freed = {k for c in change for k in linked.get(c, ())}
    want = {**{k: v for k, v in REFERENCE.items() if k not in freed}, **change}
    mask = pd.Series(True, index=done.index)
    for k, v in want.items():
        mask &= (done[k] if k in done else pd.Series(REFERENCE.get(k), index=done.index)) == v
    return done[mask]


def families(done: pd.DataFrame) -> list[Finding]:
    """Each family against the reference VAE, paired by seed within a dataset: the ELBO-IWAE gap, the NLL, the
    active units. Runs that differ in nothing else than the family's own fields are compared."""
    if done is None or len(done) == 0 or not any(k in done for k in REFERENCE):
        return []
    done = done.assign(elbo_gap=done["neg_elbo"] - done["iwae_nll"]) if "iwae_nll" in done else done
    out = []
    for change, metric, sign, text in FAMILY_CLAIMS:
        ref, fam = family_rows(done, {}), family_rows(done, change)
        if fam.empty or metric not in done:
            continue
        for ds in sorted(set(fam["dataset"])):
            claim = f"{ds}: {text}."
            a = ref[ref["dataset"] == ds].set_index("seed")[metric].dropna()
            b = fam[fam["dataset"] == ds].set_index("seed")[metric].dropna()
            both = a.index.intersection(b.index)
            if len(both) == 0:
                why = "no " + metric.replace("_", " ") + " measured" if b.empty else "needs runs of the reference VAE"
                out.append(Finding(claim, f"{why} with the same seeds" if not b.empty else why, UNKNOWN))
                continue
            diff = a[both] - b[both]
            head = (
                f"{metric.replace('_', ' ')}: {_f(float(a[both].mean()))} (reference) vs {_f(float(b[both].mean()))} "
                f"({', '.join(f'{k} {v}' for k, v in change.items())})"
            )
            if len(both) >= MIN_SEEDS:
                eff = paired(diff)
                out.append(
                    tested(
                        claim,
                        f"{head}; reference minus family, paired by seed: {eff.text()}.",
                        [effect_test(eff, sign)],
                    )
                )
            else:
                m = float(diff.mean())
                out.append(
                    means_only(
                        claim,
                        f"{head}{no_stats_note(len(both))}.",
                        HOLDS if m * sign > 0 else FAILS if m * sign < 0 else INCONCLUSIVE,
                    )
                )
    return out


def reference_only(rows: pd.DataFrame | None) -> pd.DataFrame | None:
    """The original study's claims are about the reference VAE: where a study varies a family's field, runs of the
    other families stay out of them (a study of one other model, e.g. only mlp runs, keeps its runs)."""
    if rows is None or len(rows) == 0:
        return rows
    varied = {k: v for k, v in REFERENCE.items() if k in rows and rows[k].nunique() > 1}
    mask = pd.Series(True, index=rows.index)
    for k, v in varied.items():
        mask &= rows[k] == v
    return rows[mask]


def kl_groups(latent: pd.DataFrame) -> list[Finding]:
    """Where a hierarchical VAE puts its information: the share of the KL in its finest latent groups."""
    if latent is None or "kl_share_finest" not in latent:
        return []
    out = []
    for ds, sub in latent.dropna(subset=["kl_share_finest"]).groupby("dataset"):
        claim = f"{ds}: the hierarchical VAE's finest latent groups (H/2 × W/2) carry most of its KL."
        share = sub["kl_share_finest"].astype(float)
        head = f"share of the KL in the finest groups: {', '.join(f'{v:.0%}' for v in share)}"
        if len(share) >= MIN_SEEDS:
            eff = paired(share - 0.5)
            out.append(tested(claim, f"{head}; minus one half: {eff.text()}.", [effect_test(eff, +1)]))
        else:
            above = int((share > 0.5).sum())
            out.append(
                means_only(
                    claim,
                    f"{head}{no_stats_note(len(share)).replace('per setting', 'scored')}.",
                    HOLDS if above == len(share) else FAILS if above == 0 else MIXED,
                )
            )
    return out


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
        )
        for ds in sorted(set(latent["dataset"]) - set(beta["dataset"]))
    ]


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


# ---------------------------------------------------------------- disentanglement (the `disentangle` preset)

DISENTANGLEMENT_CLAIM_METRICS = ("mig", "dci_disentanglement")


def main_weight(rows: pd.DataFrame) -> pd.Series:
    """Each run's value of its objective's main weight (a column the table lacks counts as the default)."""
    objective = rows["objective"] if "objective" in rows else pd.Series("elbo", index=rows.index)
    weight = {o: objective_entry(o).main_weight if o in OBJECTIVES else "beta" for o in objective.unique()}
    return pd.Series(
        [
            float(rows.at[i, weight[o]]) if weight[o] in rows else float(FIELDS[weight[o]].default)
            for i, o in objective.items()
        ],
        index=rows.index,
        dtype=float,
    )


def beta_disentangles(ds: str, rows: pd.DataFrame) -> list[Finding]:
    """'Larger β gives more disentangled codes' on the β-VAE runs, by MIG and DCI disentanglement. With 3 or more
    seeds: the slope per doubling of β and its test; a slope that is not significant is inconclusive, and the
    evidence says when its change over the β range is smaller than the seeds' spread at one β."""
    claim = f"{ds}: larger β gives more disentangled codes (MIG and DCI disentanglement rise with β)."
    if rows.empty or rows["beta"].nunique() < 2:
        return [Finding(claim, "needs β-VAE runs (objective elbo) at two or more values of β", UNKNOWN)]
    k = min_seeds(rows, ["beta"])
    lo, hi = float(rows["beta"].min()), float(rows["beta"].max())
    parts, signs, tests = [], [], []
    for m in DISENTANGLEMENT_CLAIM_METRICS:
        means = rows.groupby("beta")[m].mean().sort_index()
        seed_sd = float(rows.groupby("beta")[m].std(ddof=1).mean()) if k > 1 else math.nan
        head = f"{m} {_f(means.iloc[0])} → {_f(means.iloc[-1])} as β goes {lo:g} → {hi:g}"
        if k >= MIN_SEEDS:
            eff = trend(rows["beta"], rows[m])
            tests.append(effect_test(eff, +1, DELTA[m], "per doubling"))
            change = abs(eff.estimate) * math.log2(hi / lo)
            swamped = eff.sign(+1) == 0 and change < seed_sd  # no evidence either way: inconclusive
            parts.append(
                f"{head}; slope per doubling of β {eff.text()}; seeds' spread (sd at one β) {_f(seed_sd)}"
                + (" exceeds the change over the β range" if swamped else "")
            )
        else:
            rises = means.iloc[-1] > means.iloc[0]
            steps, n = _steps(list(means), decreasing=False)
            signs.append(1 if rises and steps == n else -1 if not rises else 0)
            parts.append(f"{head}, rising in {steps} of {n} steps")
    if k < MIN_SEEDS:
        return [means_only(claim, "; ".join(parts) + f"{no_stats_note(k)}.", _combine(signs))]
    return [tested(claim, "; ".join(parts) + ".", tests, "combine")]


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


def objective_vs_seed(ds: str, rows: pd.DataFrame) -> list[Finding]:
    """'The objective matters more than the seed' (Locatello et al. 2019: more than its weight and the seed), by MIG
    and DCI disentanglement, from a variance-components model: the intra-class correlation of the runs grouped by
    objective (an objective's weights and seeds are its within spread). It holds for a metric when the ICC is
    significantly above 1/2, does not hold when significantly below, and is inconclusive in between. With 2 seeds
    the spreads are compared without a test."""
    claim = f"{ds}: the objective matters more than the seed for disentanglement (Locatello et al. 2019: often not)."
    if "objective" not in rows or rows["objective"].nunique() < 2:
        return [Finding(claim, "needs runs of two or more objectives", UNKNOWN)]
    rows = rows.assign(weight=main_weight(rows))
    k = min_seeds(rows, ["objective", "weight"])
    if k < 2:
        return [Finding(claim, "needs two or more seeds per setting to measure the seeds' spread", UNKNOWN)]
    parts, signs, tests = [], [], []
    for m in DISENTANGLEMENT_CLAIM_METRICS:
        by_obj = rows.groupby("objective")[m]
        between = float(by_obj.mean().std(ddof=1))
        seed_sd = float(rows.groupby(["objective", "weight"])[m].std(ddof=1).mean())
        means = ", ".join(f"{o} {_f(v)}" for o, v in by_obj.mean().sort_values(ascending=False).items())
        head = f"{m}: objectives' means {means} (sd between objectives {_f(between)}; seeds' sd within a setting {_f(seed_sd)})"
        if k >= MIN_SEEDS:
            eff = icc([g.to_numpy(float) for _, g in by_obj])
            tests.append(effect_test(eff, +1))
            parts.append(
                f"{head}; share of variance between objectives (ICC) {_f(eff.estimate + 0.5)}, 95 % CI "
                f"[{_f(eff.lo + 0.5)}, {_f(eff.hi + 0.5)}], F-test of ICC = ½ p {_p(eff.p)}"
            )
        else:
            signs.append(1 if between > 2 * seed_sd else -1 if between <= seed_sd else 0)
            parts.append(head)
    if k < MIN_SEEDS:
        return [means_only(claim, "; ".join(parts) + f"{no_stats_note(k)}.", _combine(signs))]
    return [tested(claim, "; ".join(parts) + ".", tests, "combine")]


# ---------------------------------------------------------------- verdicts traced along training

NOT_MEASURED = "not measured"  # a claim whose measurements exist for the final models only (generation scores)
_FRACTION_NAMES = {0.25: "¼", 0.5: "½", 0.75: "¾", 1.0: "1"}


def fraction_name(fraction: float) -> str:
    return _FRACTION_NAMES.get(round(fraction, 6), f"{fraction:g}")


def along_training(final: list[Finding], earlier: dict[float, list[Finding]]) -> list[Finding]:
    """Each finding of the trained models with its verdict at every earlier fraction of the budget (the same claim
    tested on the models kept there, TrainConfig.snapshots), the last entry its own at 1."""
    if not earlier:
        return final
    verdicts = {fr: {f.claim: f.verdict for f in fs} for fr, fs in earlier.items()}
    return [
        replace(
            f, along=(*((fr, verdicts[fr].get(f.claim, NOT_MEASURED)) for fr in sorted(verdicts)), (1.0, f.verdict))
        )
        for f in final
    ]


def stability(f: Finding) -> str:
    """'stable since ½' (the verdict at 1 was already reached at ½ and kept), or 'changed at 1' (more training
    changed it: it may change again); empty without snapshots."""
    measured = [(fr, v) for fr, v in f.along if v != NOT_MEASURED]
    if len(f.along) < 2:
        return ""
    if len(measured) < 2:  # e.g. generation scores, taken of the final models only
        return "measured at the end only"
    verdicts = [v for _, v in measured]
    if verdicts[-2] != verdicts[-1]:
        return f"changed at 1, was '{verdicts[-2]}' at {fraction_name(measured[-2][0])}"
    first = len(verdicts) - 1
    while first > 0 and verdicts[first - 1] == verdicts[-1]:
        first -= 1
    return f"stable since {fraction_name(measured[first][0])}"


def along_text(f: Finding) -> str:
    """The verdicts along training in one line: '¼: inconclusive · ½: holds · 1: holds — stable since ½'."""
    if len(f.along) < 2:
        return ""
    return " · ".join(f"{fraction_name(fr)}: {v}" for fr, v in f.along) + f" — {stability(f)}"


def split_testable(findings: list[Finding]) -> tuple[list[Finding], list[Finding]]:
    """(the findings a study's grid can test, those it cannot: no data of the kind they need, e.g. one dataset
    for the dataset comparison). A report lists the first and names the second in one line."""
    untestable = [f for f in findings if f.verdict == UNKNOWN and f.evidence.startswith(("needs ", "no "))]
    return [f for f in findings if f not in untestable], untestable


def untestable_text(untestable: list[Finding]) -> str:
    """The one line a report gives the claims its grid cannot test."""
    return (
        "Not testable with this study's grid: "
        + "; ".join(f"{f.claim.rstrip('.')} ({f.evidence})" for f in untestable)
        + "."
    )


def disentanglement(done: pd.DataFrame | None) -> list[Finding]:
    """The disentanglement study's claims, per factor dataset: runs scored with the metrics (eval.json)."""
    if done is None or "mig" not in done:
        return []
    rows = done.dropna(subset=list(DISENTANGLEMENT_CLAIM_METRICS))
    if rows.empty:
        return []
    if "objective" not in rows:
        rows = rows.assign(objective="elbo")
    out = []
    for ds, sub in rows.groupby("dataset"):
        out += beta_disentangles(ds, sub[sub["objective"] == "elbo"])
        out += objective_vs_seed(ds, sub)
    return out

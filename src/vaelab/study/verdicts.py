"""Findings and their verdicts: a claim's tests made a verdict (negligible effects included), Holm over a study, convergence, stability along training and the at-a-glance rows."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import pandas as pd

from vaelab.study.stats import ALPHA, MIN_SEEDS, Effect, fmt, fmt_p, holm_adjusted, tost

HOLDS, FAILS, MIXED, INCONCLUSIVE, UNKNOWN = "holds", "does not hold", "partly holds", "inconclusive", "not enough data"
NEGLIGIBLE = "no effect (negligible)"
VERDICTS = (HOLDS, MIXED, NEGLIGIBLE, FAILS, INCONCLUSIVE, UNKNOWN)
# A cell whose test negative ELBO still moved more than this (relative) between half of its budget and its end has
# not converged: a verdict resting on it may change with more training, and says so.
CONVERGED_WITHIN = 0.01


class Test(NamedTuple):
    """One test behind a verdict: p of 'no effect' and the estimate's direction (+1 as claimed, -1 against, 0 none);
    the p of the equivalence test (tost) that the effect lies within the smallest effect of interest, and that bound
    in words; `group` joins the tests of one curve (its steps between settings) or of one metric; the estimate, its
    interval and delta (in `unit`) feed the at-a-glance table and the forest plot."""

    p: float
    direction: int
    p_equiv: float = math.nan
    within: str = ""
    group: int = 0
    label: str = ""
    estimate: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    delta: float = math.nan
    unit: str = ""
    claimed: int = 0  # the sign of the effect the claim predicts


@dataclass(frozen=True)
class Finding:
    claim: str
    evidence: str
    verdict: str
    # the tests behind the verdict; `rule` makes their outcomes a verdict (RULES). A study's findings are one family:
    # holm() decides every verdict again from Holm-adjusted p-values, kept in `adjusted`.
    tests: tuple[Test, ...] = ()
    rule: str = "single"
    # the verdict at each fraction of the training budget, (fraction, verdict), the last one at 1 (along_training)
    along: tuple[tuple[float, str], ...] = ()
    adjusted: tuple[float, ...] = ()
    # the largest relative change of test negative ELBO between half of the budget and the end among the cells
    # the finding reads (NaN when the study kept no model at half)
    moved: float = math.nan
    topic: str = ""  # the claim without its dataset, for the at-a-glance table
    dataset: str = ""


def effect_test(
    eff: Effect, claimed: int, delta: float = math.nan, unit: str = "", group: int = 0, label: str = ""
) -> Test:
    """An effect as a Test of Finding.tests; with `delta` (the smallest effect of interest, in `unit`) also its
    equivalence test."""
    within = f"±{fmt(delta)}{' ' + unit if unit else ''}" if delta > 0 else ""
    direction = (
        0 if (not eff.estimate or eff.estimate != eff.estimate) else (1 if np.sign(eff.estimate) == claimed else -1)
    )
    return Test(
        eff.p, direction, tost(eff, delta), within, group, label, eff.estimate, eff.lo, eff.hi, delta, unit, claimed
    )


NO_EFFECT = -2  # a test's sign when the effect is shown to lie within the smallest effect of interest


def _sign(p: float, direction: int, p_equiv: float = math.nan) -> int:
    """NO_EFFECT: shown by two one-sided tests to lie within ±delta — whatever its p, an effect that small is no
    effect; +1 / -1: significant for / against the claim; 0: the data cannot tell."""
    if p_equiv < ALPHA:
        return NO_EFFECT
    return direction if p < ALPHA else 0


def _outcome(signs: list[int]) -> str:
    """One group's outcome: a single test, or a curve's steps (every step as claimed -> holds; some as claimed and
    the others flat or reversed -> partly; none as claimed and some against -> does not hold)."""
    if signs and all(s == NO_EFFECT for s in signs):
        return NEGLIGIBLE
    if signs and all(s > 0 for s in signs):
        return HOLDS
    if any(s > 0 for s in signs):
        return MIXED
    return FAILS if any(s == -1 for s in signs) else INCONCLUSIVE


def _all(outs: list[str]) -> str:
    """Every part must hold (e.g. a trade-off): all hold -> holds; any against -> does not hold; some -> partly."""
    if outs and all(o == HOLDS for o in outs):
        return HOLDS
    if FAILS in outs:
        return FAILS
    if outs and all(o == NEGLIGIBLE for o in outs):
        return NEGLIGIBLE
    return MIXED if (HOLDS in outs or MIXED in outs) else INCONCLUSIVE


def _combine(outs: list[str]) -> str:
    """The claim's metrics: all hold -> holds; some -> partly; none and some against -> does not hold; all shown
    negligible -> no effect; else inconclusive."""
    if outs and all(o == HOLDS for o in outs):
        return HOLDS
    if HOLDS in outs or MIXED in outs:
        return MIXED
    if FAILS in outs:
        return FAILS
    return NEGLIGIBLE if outs and all(o == NEGLIGIBLE for o in outs) else INCONCLUSIVE


RULES = {"single": lambda outs: outs[0], "all": _all, "combine": _combine}


def _decide(tests, ps: list[float], p_equivs: list[float], rule: str) -> tuple[str, list[int]]:
    signs = [_sign(p, t.direction, e) for t, p, e in zip(tests, ps, p_equivs)]
    groups: dict[int, list[int]] = {}
    for t, s in zip(tests, signs):
        groups.setdefault(t.group, []).append(s)
    return RULES[rule]([_outcome(g) for g in groups.values()]), signs


def _notes(tests, signs: list[int], p_equivs: list[float]) -> str:
    """The sentences a verdict adds to the evidence: which effects were shown negligible, and the shape of each
    curve judged step by step."""
    parts = [
        f"within {t.within} (two one-sided tests, p {fmt_p(pe)})"
        for t, s, pe in zip(tests, signs, p_equivs)
        if s == NO_EFFECT
    ]
    text = f" No effect: {'; '.join(parts)}." if parts else ""
    groups: dict[int, list[tuple[Test, int]]] = {}
    for t, s in zip(tests, signs):
        groups.setdefault(t.group, []).append((t, s))
    for steps in groups.values():
        if len(steps) > 1:
            text += " Shape: " + shape_words(steps) + "."
    return text


def shape_words(steps: list[tuple[Test, int]]) -> str:
    """A curve's steps in words: 'as claimed up to 32; reversed 32→128' (each step's label names its settings)."""
    word = {1: "as claimed", -1: "reversed", NO_EFFECT: "no effect", 0: "no significant change"}
    return "; ".join(f"{t.label}: {word[s]}" for t, s in steps)


def tested(claim: str, evidence: str, tests: list, rule: str = "single", topic: str = "", dataset: str = "") -> Finding:
    """A finding whose verdict its tests (Test, or (p, direction) pairs) decide, at the unadjusted level until
    holm() adjusts the family."""
    tests = [Test(*t) for t in tests]
    p_equivs = [t.p_equiv for t in tests]
    verdict, signs = _decide(tests, [t.p for t in tests], p_equivs, rule)
    evidence += _notes(tests, signs, p_equivs)
    return Finding(claim, evidence, verdict, tuple(tests), rule, topic=topic, dataset=dataset)


def holm(findings: list[Finding]) -> list[Finding]:
    """The study's findings as one family: every test's p adjusted by Holm's step-down method (statsmodels), the
    equivalence tests' p as a family of their own, each verdict decided again from the adjusted p-values, and the
    evidence showing them beside the raw ones."""
    tests = [t for f in findings for t in f.tests]
    if not tests:
        return findings
    adjusted = iter(holm_adjusted([t.p for t in tests]))
    equiv = iter(holm_adjusted([t.p_equiv for t in tests]))
    out = []
    for f in findings:
        if not f.tests:
            out.append(f)
            continue
        adj = [float(next(adjusted)) for _ in f.tests]
        adj_equiv = [float(next(equiv)) for _ in f.tests]
        verdict, signs = _decide(f.tests, adj, adj_equiv, f.rule)
        raw_equiv = [t.p_equiv for t in f.tests]
        _, raw = _decide(f.tests, [t.p for t in f.tests], raw_equiv, f.rule)
        # the evidence as tested() wrote it, less its unadjusted notes: the adjusted ones replace them
        base = f.evidence.removesuffix(_notes(f.tests, raw, raw_equiv))
        text = ", ".join(fmt_p(a).removeprefix("= ") for a in adj)
        evidence = f"{base} Holm-adjusted p over the study's {len(tests)} tests: {text}." if len(tests) > 1 else base
        evidence += _notes(f.tests, signs, adj_equiv)
        out.append(replace(f, evidence=evidence, verdict=verdict, adjusted=tuple(adj)))
    return out


def min_seeds(rows: pd.DataFrame, by: list[str]) -> int:
    return int(rows.groupby(by).size().min()) if len(rows) else 0


def no_stats_note(k: int) -> str:
    return (
        f" (means over {k} seed{'s' if k != 1 else ''} per setting: no confidence interval or test; "
        f"{MIN_SEEDS} or more seeds give them)"
    )


def means_only(claim: str, evidence: str, lean: str, topic: str = "", dataset: str = "") -> Finding:
    """Fewer than MIN_SEEDS seeds: no verdict. The evidence shows the means and which way they lean."""
    text = f"{evidence} Not enough data for a verdict; the means alone lean '{lean}'."
    return Finding(claim, text, UNKNOWN, topic=topic, dataset=dataset)


def converged(findings: list[Finding], rows: pd.DataFrame | None) -> list[Finding]:
    """Each finding with the largest ½ → end change of test negative ELBO among `rows` (the cells it reads; the
    `half_change` column study_findings adds where the study kept models at half of the budget)."""
    if rows is None or "half_change" not in rows or rows["half_change"].isna().all():
        return findings
    moved = float(rows["half_change"].abs().max())
    return [replace(f, moved=moved) for f in findings]


def convergence_text(f: Finding) -> str:
    """'converged (≤ 0.4 % from ½ to the end)' or 'not converged: test −ELBO moved up to 3.2 % from ½ to the end'."""
    if f.moved != f.moved:
        return ""
    if f.moved > CONVERGED_WITHIN:
        return f"not converged: test −ELBO still moved up to {f.moved:.1%} from ½ to the end"
    return f"converged (test −ELBO within {f.moved:.1%} from ½ to the end)"


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


# ---------------------------------------------------------------- at a glance


def glance_rows(findings: list[Finding]) -> list[dict]:
    """One row per finding for the table that opens a report: claim, dataset, verdict, the first effect with its
    interval and δ, its Holm-adjusted p, stability along training and convergence."""
    rows = []
    for f in findings:
        t = f.tests[0] if f.tests else None
        effect = ""
        if t is not None and t.estimate == t.estimate:
            unit = f" {t.unit}" if t.unit else ""
            effect = f"{t.label + ': ' if t.label else ''}{fmt(t.estimate)}{unit} [{fmt(t.lo)}, {fmt(t.hi)}]"
            effect += f" (δ ±{fmt(t.delta)})" if t.delta == t.delta else ""
        rows.append(
            {
                "claim": f.topic or f.claim,
                "dataset": f.dataset,
                "verdict": f.verdict,
                "effect": effect,
                "p_adjusted": fmt_p(min(f.adjusted)).removeprefix("= ") if f.adjusted else "",
                "stability": stability(f),
                "convergence": convergence_text(f),
            }
        )
    return rows


def glance_markdown(findings: list[Finding]) -> str:
    """The at-a-glance table as Markdown (summary.md, vaelab findings)."""
    head = "| claim | dataset | verdict | effect [95 % CI] (δ) | Holm p | along training | convergence |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in glance_rows(findings):
        lines.append(
            f"| {r['claim']} | {r['dataset']} | **{r['verdict']}** | {r['effect']} | {r['p_adjusted']} | "
            f"{r['stability']} | {r['convergence']} |"
        )
    return "\n".join(lines)


def forest_points(findings: list[Finding]) -> list[dict]:
    """The forest plot's points: every test with an estimate and a δ, scaled by its δ and signed so that the claimed
    direction is positive (±δ is ±1 for all, and right of +1 is a real effect as claimed)."""
    points = []
    for f in findings:
        for t in f.tests:
            if t.estimate == t.estimate and t.delta > 0 and t.lo == t.lo:
                sign = t.claimed if t.claimed else 1
                lo, hi = sorted((t.lo * sign / t.delta, t.hi * sign / t.delta))
                where = f" ({f.dataset})" if f.dataset else ""
                label = f"{f.topic or f.claim[:50]}{where}" + (f": {t.label}" if t.label else "")
                points.append(
                    {
                        "label": label,
                        "estimate": t.estimate * sign / t.delta,
                        "lo": lo,
                        "hi": hi,
                        "verdict": f.verdict,
                    }
                )
    return points

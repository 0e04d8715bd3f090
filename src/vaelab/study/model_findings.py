"""Findings about model families (each against the reference VAE, unpaired), a hierarchical VAE's KL groups, and disentanglement (β's trend; the objective against the seed)."""

from __future__ import annotations

import math

import pandas as pd

from vaelab.models.losses import OBJECTIVES, objective_entry
from vaelab.runs.config import FIELDS
from vaelab.study.stats import MIN_SEEDS, fmt, fmt_p, icc, paired, welch
from vaelab.study.trends import DELTA_SHARE, Trend, trend_findings
from vaelab.study.verdicts import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
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


def families(done: pd.DataFrame, along: pd.DataFrame | None = None) -> list[Finding]:
    """Each family against the reference VAE within a dataset: the ELBO-IWAE gap, the NLL, the active units. Runs
    that differ in nothing else than the family's own fields are compared, unpaired (Welch): runs of one seed share
    the data order but not their initial weights, since the models' parameters differ. `along` (the models kept
    along training) gives the comparison at equal images seen where budgets of equal compute differ in epochs."""
    if done is None or len(done) == 0 or not any(k in done for k in REFERENCE):
        return []
    done = done.assign(elbo_gap=done["neg_elbo"] - done["iwae_nll"]) if "iwae_nll" in done else done
    out = []
    for change, metric, sign, text in FAMILY_CLAIMS:
        ref, fam = family_rows(done, {}), family_rows(done, change)
        if fam.empty or metric not in done:
            continue
        for ds in sorted(set(fam["dataset"])):
            pair = ref[ref["dataset"] == ds], fam[fam["dataset"] == ds]
            out += _family(ds, text, change, metric, sign, *pair, equal_images(*pair, along, metric))
    return out


def _family(ds: str, text: str, change: dict, metric: str, sign: int, ref, fam, epochs: str = "") -> list[Finding]:
    claim, topic = f"{ds}: {text}.", text.split(" (")[0]
    a, b = ref[metric].dropna(), fam[metric].dropna()
    if a.empty or b.empty:
        why = "no " + metric.replace("_", " ") + " measured" if b.empty else "needs runs of the reference VAE"
        return [Finding(claim, why, UNKNOWN, topic=topic, dataset=ds)]
    what = ", ".join(f"{k} {v}" for k, v in change.items())
    head = f"{metric.replace('_', ' ')}: {fmt(float(a.mean()))} (reference, {len(a)} runs) vs {fmt(float(b.mean()))} ({what}, {len(b)} runs)"
    if min(len(a), len(b)) < MIN_SEEDS:
        m = float(a.mean() - b.mean())
        lean = HOLDS if m * sign > 0 else FAILS if m * sign < 0 else INCONCLUSIVE
        return [means_only(claim, f"{head}{no_stats_note(min(len(a), len(b)))}.{epochs}", lean, topic, ds)]
    eff = welch(a, b)
    delta = DELTA_SHARE * abs(float(a.mean()))  # of the reference's level
    evidence = (
        f"{head}; reference minus family, unpaired (different models share the data order by seed, not their "
        f"initial weights): {eff.text()}.{epochs}"
    )
    rows = pd.concat([ref.loc[a.index], fam.loc[b.index]])
    return converged([tested(claim, evidence, [effect_test(eff, sign, delta)], topic=topic, dataset=ds)], rows)


EQUAL_IMAGES = 0.10  # two points of training saw "the same images" within 10 %


def _points(rows: pd.DataFrame, along: pd.DataFrame | None, metric: str) -> dict[float, tuple[float, pd.Series]]:
    """{fraction of the budget: (images seen, the metric's values)} of these runs: their end, and each model kept
    along training (a snapshot at fraction f of the steps has seen f × the images of the end)."""
    points = {1.0: rows}
    if along is not None and "run_id" in rows and {"run_id", "fraction"} <= set(along.columns):
        kept = along[along["run_id"].isin(rows["run_id"]) & (along["fraction"] < 1)]
        points.update({float(f): g for f, g in kept.groupby("fraction")})
    return {f: (f * float(g["images_seen"].mean()), g[metric].dropna()) for f, g in points.items() if metric in g}


def equal_images(ref: pd.DataFrame, fam: pd.DataFrame, along: pd.DataFrame | None, metric: str) -> str:
    """Where the reference and a family saw different numbers of images (equal FLOPs, not equal epochs), the same
    comparison at a point where both had seen the same images, if the kept models give one ('' when they saw the
    same images anyway)."""
    if "images_seen" not in ref or "images_seen" not in fam or ref.empty or fam.empty:
        return ""
    ia, ib = float(ref["images_seen"].mean()), float(fam["images_seen"].mean())
    if not (ia > 0 and ib > 0) or abs(ia / ib - 1) <= EQUAL_IMAGES:
        return ""
    head = f" Images seen: reference {fmt(ia)}, family {fmt(ib)} ({ia / ib:.2g}×) — equal compute, not equal epochs"
    pa, pb = _points(ref, along, metric), _points(fam, along, metric)
    near = [
        (abs(math.log(a[0] / b[0])), fa, fb)
        for fa, a in pa.items()
        for fb, b in pb.items()
        if len(a[1]) and len(b[1]) and a[0] > 0 and b[0] > 0
    ]
    best = min(near, default=None)
    if best is None or best[0] > math.log(1 + EQUAL_IMAGES):
        return (
            f"{head}; no kept model of each saw the same images (within 10 %): the data have no equal-epoch comparison."
        )
    _, fa, fb = best
    a, b = pa[fa][1], pb[fb][1]
    at = f"at equal images (reference at {fa:g} of its budget, family at {fb:g}: about {fmt(pa[fa][0])} images)"
    if min(len(a), len(b)) < MIN_SEEDS:
        return f"{head}; {at}: {fmt(float(a.mean()))} vs {fmt(float(b.mean()))}{no_stats_note(min(len(a), len(b)))}."
    return f"{head}; {at}, reference minus family: {welch(a, b).text()} (beside the verdict, not in it)."


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
        topic = "a hierarchical VAE's finest groups carry most KL"
        share = sub["kl_share_finest"].astype(float)
        head = f"share of the KL in the finest groups, one per seed: {', '.join(f'{v:.0%}' for v in share)}"
        if len(share) >= MIN_SEEDS:
            eff = paired(share - 0.5, "t-test over seeds")
            test = effect_test(eff, +1, DELTA_SHARE * 0.5, "", 0, "share − ½")  # δ: of the level compared (½)
            out += converged(
                [tested(claim, f"{head}; minus one half: {eff.text()}.", [test], topic=topic, dataset=ds)], sub
            )
        else:
            above = int((share > 0.5).sum())
            lean = HOLDS if above == len(share) else FAILS if above == 0 else MIXED
            text = f"{head}{no_stats_note(len(share)).replace('per setting', 'scored')}."
            out.append(means_only(claim, text, lean, topic, ds))
    return out


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


BETA_DISENTANGLES = Trend(
    "larger β disentangles",
    "beta",
    tuple((m, +1) for m in DISENTANGLEMENT_CLAIM_METRICS),
    "{ds}: larger β gives more disentangled codes (MIG and DCI disentanglement rise with β).",
    "combine",
)


def beta_disentangles(ds: str, rows: pd.DataFrame) -> list[Finding]:
    """'Larger β gives more disentangled codes' on the β-VAE runs, by MIG and DCI disentanglement: shape before
    slope (trends.trend_finding), the seed as the replicate."""
    if rows.empty or rows["beta"].nunique() < 2:
        why = "needs β-VAE runs (objective elbo) at two or more values of β"
        return [Finding(BETA_DISENTANGLES.text.format(ds=ds), why, UNKNOWN, topic=BETA_DISENTANGLES.topic, dataset=ds)]
    return trend_findings(BETA_DISENTANGLES, rows.assign(dataset=ds))


def objective_vs_seed(ds: str, rows: pd.DataFrame) -> list[Finding]:
    """'The objective matters more than the seed' (Locatello et al. 2019: more than its weight and the seed), by MIG
    and DCI disentanglement: runs grouped by setting (objective × its main weight), so that the seeds are each
    group's replicates; the intra-class correlation is the share of variance between settings. It holds for a
    metric when the ICC is significantly above 1/2, does not hold when significantly below, and is inconclusive in
    between. With 2 seeds the spreads are compared without a test."""
    claim = f"{ds}: the objective matters more than the seed for disentanglement (Locatello et al. 2019: often not)."
    topic = "the objective matters more than the seed"
    if "objective" not in rows or rows["objective"].nunique() < 2:
        return [Finding(claim, "needs runs of two or more objectives", UNKNOWN, topic=topic, dataset=ds)]
    rows = rows.assign(weight=main_weight(rows))
    k = min_seeds(rows, ["objective", "weight"])
    if k < 2:
        why = "needs two or more seeds per setting to measure the seeds' spread"
        return [Finding(claim, why, UNKNOWN, topic=topic, dataset=ds)]
    parts, outs, tests = [], [], []
    settings = rows.groupby(["objective", "weight"])
    g = settings.ngroups
    for i, m in enumerate(DISENTANGLEMENT_CLAIM_METRICS):
        between = float(settings[m].mean().std(ddof=1))
        seed_sd = float(settings[m].std(ddof=1).mean())
        head = f"{m}: sd between the {g} settings' means {fmt(between)}; seeds' sd within a setting {fmt(seed_sd)}"
        if k >= MIN_SEEDS:
            eff = icc([grp.to_numpy(float) for _, grp in settings[m]])
            tests.append(effect_test(eff, +1, DELTA_SHARE * 0.5, "", i, f"{m} ICC − ½"))  # δ: of the level (½)
            parts.append(
                f"{head}; share of variance between settings (ICC) {fmt(eff.estimate + 0.5)}, 95 % CI "
                f"[{fmt(eff.lo + 0.5)}, {fmt(eff.hi + 0.5)}], F-test of ICC = ½ p {fmt_p(eff.p)}"
            )
        else:
            outs.append(HOLDS if between > 2 * seed_sd else FAILS if between <= seed_sd else INCONCLUSIVE)
            parts.append(head)
    if k < MIN_SEEDS:
        lean = HOLDS if all(o == HOLDS for o in outs) else FAILS if all(o == FAILS for o in outs) else MIXED
        return [means_only(claim, "; ".join(parts) + f"{no_stats_note(k)}.", lean, topic, ds)]
    caveat = (
        f" With {g} settings the interval is wide: it can tell a dominant setting effect from a dominant seed "
        "effect, not a share near ½ from one a little above."
    )
    return converged([tested(claim, "; ".join(parts) + "." + caveat, tests, "combine", topic, ds)], rows)


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

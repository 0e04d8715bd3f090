"""The study's claims, checked against measured results: each finding states its evidence and a verdict."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

HOLDS, FAILS, MIXED, UNKNOWN = "holds", "does not hold", "partly holds", "not enough data"


@dataclass(frozen=True)
class Finding:
    claim: str
    evidence: str
    verdict: str


def _steps(values: list[float], decreasing: bool) -> tuple[int, int]:
    """How many consecutive steps move in the claimed direction, of how many."""
    pairs = list(zip(values[:-1], values[1:]))
    ok = sum((b < a) if decreasing else (b > a) for a, b in pairs)
    return ok, len(pairs)


def _f(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _quality_metric(t: pd.DataFrame) -> tuple[str, str]:
    if "bpd_elbo" in t and t["bpd_elbo"].notna().all():
        return "bpd_elbo", "bits/dim"
    return "neg_elbo", "nats"


def dataset_complexity(latent: pd.DataFrame) -> list[Finding]:
    claim = "Fashion-MNIST is easier to model than CIFAR-10 (lower negative ELBO per dimension)."
    if not {"fashion-mnist", "cifar10"} <= set(latent.get("dataset", [])):
        return [Finding(claim, "needs finished runs of both datasets", UNKNOWN)]
    metric, unit = _quality_metric(latent)
    piv = latent.pivot(index="latent_dim", columns="dataset", values=metric)[["fashion-mnist", "cifar10"]].dropna()
    if piv.empty:
        return [Finding(claim, "no latent size was run on both datasets", UNKNOWN)]
    fm, c10 = piv["fashion-mnist"].mean(), piv["cifar10"].mean()
    wins = int((piv["fashion-mnist"] < piv["cifar10"]).sum())
    verdict = HOLDS if wins == len(piv) else FAILS if wins == 0 else MIXED
    ev = (f"{_f(fm)} vs {_f(c10)} {unit} (Fashion-MNIST vs CIFAR-10, mean over latent sizes "
          f"{', '.join(map(str, piv.index))}); Fashion-MNIST lower at {wins} of {len(piv)} sizes.")
    return [Finding(claim, ev, verdict)]


def latent_size(latent: pd.DataFrame) -> list[Finding]:
    out = []
    for ds, sub in latent.groupby("dataset"):
        sub = sub.sort_values("latent_dim")
        claim = f"{ds}: larger latent sizes improve reconstruction."
        if len(sub) < 2:
            out.append(Finding(claim, "needs at least two latent sizes", UNKNOWN))
            continue
        r = list(sub["recon"])
        k, n = _steps(r, decreasing=True)
        lo, hi = sub["latent_dim"].iloc[0], sub["latent_dim"].iloc[-1]
        verdict = HOLDS if r[-1] < r[0] and k == n else MIXED if r[-1] < r[0] else FAILS
        out.append(Finding(claim, f"reconstruction {'falls' if r[-1] < r[0] else 'rises'} from {_f(r[0])} to "
                                  f"{_f(r[-1])} nats as latent_dim goes {lo}→{hi}, monotone in {k} of {n} steps.", verdict))
        au = sub[["latent_dim", "active_units"]].dropna()
        if len(au):
            big = au.iloc[-1]
            frac = big["active_units"] / big["latent_dim"]
            claim = f"{ds}: a large latent space is not fully used (posterior collapse of unneeded units)."
            verdict = HOLDS if frac < 0.9 else FAILS
            out.append(Finding(claim, f"{big['active_units']:.3g} of {int(big['latent_dim'])} units active at "
                                      f"latent_dim {int(big['latent_dim'])} ({frac:.0%}); at latent_dim "
                                      f"{int(au.iloc[0]['latent_dim'])}: {au.iloc[0]['active_units']:.3g}.", verdict))
    return out


def beta_tradeoff(beta: pd.DataFrame) -> list[Finding]:
    out = []
    if beta is None or len(beta) == 0:
        return [Finding("β trades reconstruction for a more compact code.", "no β sweep has finished", UNKNOWN)]
    for ds, sub in beta.groupby("dataset"):
        sub = sub.sort_values("beta")
        claim = f"{ds}: β trades reconstruction for a more compact code (less KL, worse reconstruction)."
        if len(sub) < 2:
            out.append(Finding(claim, "needs at least two values of β", UNKNOWN))
            continue
        kl, rec, b = list(sub["kl"]), list(sub["recon"]), list(sub["beta"])
        k1, n = _steps(kl, decreasing=True)
        k2, _ = _steps(rec, decreasing=False)
        both = kl[-1] < kl[0] and rec[-1] > rec[0]
        verdict = HOLDS if both and k1 == n and k2 == n else MIXED if both or kl[-1] < kl[0] else FAILS
        out.append(Finding(claim, f"as β goes {b[0]:g}→{b[-1]:g}: KL {_f(kl[0])}→{_f(kl[-1])} nats "
                                  f"(falls in {k1} of {n} steps) while reconstruction {_f(rec[0])}→{_f(rec[-1])} "
                                  f"nats (rises in {k2} of {n} steps).", verdict))
    return out


def organisation(latent: pd.DataFrame) -> list[Finding]:
    """'The organisation of the latent space reflects the structure of the data', made measurable."""
    out = []
    if "probe_accuracy" not in latent:
        return out
    for ds, sub in latent.dropna(subset=["probe_accuracy"]).groupby("dataset"):
        best = sub.loc[sub["probe_accuracy"].idxmax()]
        chance = 0.1  # ten balanced classes; eval.json records the exact share per run
        claim = f"{ds}: the latent space is organised by class although no label was used in training."
        verdict = HOLDS if best["probe_accuracy"] > 2 * chance else FAILS
        out.append(Finding(claim, f"a linear probe on the codes reaches {best['probe_accuracy']:.0%} test accuracy "
                                  f"(k-NN {best.get('knn_accuracy', float('nan')):.0%}, silhouette "
                                  f"{best.get('silhouette', float('nan')):.2f}) at latent_dim {int(best['latent_dim'])}, "
                                  f"vs {chance:.0%} by chance.", verdict))
    return out


def generation(latent: pd.DataFrame) -> list[Finding]:
    """Generation scored by the reference classifier (present for the runs the report or `vaelab explore` scored)."""
    out = []
    if not {"fd_prior", "fd_gmm", "conditional_accuracy"} <= set(latent.columns):
        return out
    for ds, sub in latent.dropna(subset=["fd_prior", "fd_gmm"]).groupby("dataset"):
        wins = int((sub["fd_gmm"] < sub["fd_prior"]).sum())
        pairs = "; ".join(f"{_f(r.fd_prior)} → {_f(r.fd_gmm)} at latent_dim {int(r.latent_dim)}" for r in sub.itertuples())
        out.append(Finding(f"{ds}: sampling a mixture fitted to the aggregate posterior gives samples closer to the "
                           "data than sampling N(0, I) (Ghosh et al. 2020).",
                           f"Fréchet distance in the reference classifier's features, N(0, I) → GMM: {pairs}.",
                           HOLDS if wins == len(sub) else FAILS if wins == 0 else MIXED))
    for ds, sub in latent.dropna(subset=["conditional_accuracy"]).groupby("dataset"):
        best = sub.loc[sub["conditional_accuracy"].idxmax()]
        acc = best["conditional_accuracy"]
        out.append(Finding(f"{ds}: the latent space supports class-conditional generation without retraining.",
                           f"the reference classifier labels {acc:.0%} of samples from per-class Gaussians as the "
                           f"class asked for (latent_dim {int(best['latent_dim'])}; chance 10 %; 'holds' from 50 %).",
                           HOLDS if acc >= 0.5 else MIXED if acc > 0.2 else FAILS))
    return out


def compute(latent: pd.DataFrame, beta: pd.DataFrame) -> list[Finding]:
    if latent is None or len(latent) == 0:
        return [Finding("The study's claims", "no finished runs at β = 1 yet", UNKNOWN)]
    return (dataset_complexity(latent) + latent_size(latent) + beta_tradeoff(beta) + organisation(latent)
            + generation(latent))

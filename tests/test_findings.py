"""Every verdict can come out every way: made-up per-run results where a claim holds, partly holds, does not
hold and is inconclusive, with and without the seeds that statistics need."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vaelab.app.cli import main
from vaelab.study import contrasts as C
from vaelab.study import findings as F
from vaelab.study import model_findings as M
from vaelab.study import stats as S
from vaelab.study import verdicts as V

LN2 = math.log(2)
DIMS = {"fashion-mnist": 784, "cifar10": 3072}


def verdict_is(f, want: str, seeds: int) -> bool:
    """With 3 or more seeds the verdict is `want`; with fewer there is none ('not enough data'), and the evidence
    says which way the means lean."""
    if seeds >= F.MIN_SEEDS:
        return f.verdict == want
    return f.verdict == F.UNKNOWN and f"lean '{want}'" in f.evidence


def runs(rows: list[dict], **common) -> pd.DataFrame:
    return pd.DataFrame([{**common, **r} for r in rows])


def noise(seed: int, k: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, k)


# ---------------------------------------------------------------- the statistics themselves


def test_paired_interval_and_test_match_a_hand_computation():
    d = np.array([1.0, 2.0, 3.0, 4.0])
    e = S.paired(d)
    half = 3.182446305284263 * d.std(ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4)
    assert e.estimate == 2.5 and e.lo == pytest.approx(2.5 - half) and e.hi == pytest.approx(2.5 + half)
    assert e.p == pytest.approx(0.0305, abs=5e-4)  # t = 3.873 on 3 df, two-sided
    assert e.sign(+1) == 1 and e.sign(-1) == -1
    assert S.paired([1.0, -1.0, 0.5]).sign(+1) == 0  # no clear effect


def test_a_trend_is_one_slope_per_seed_on_log2_of_the_setting():
    x = [2, 4, 8] * 3
    y = [10.0, 8.0, 6.0, 10.2, 7.9, 6.1, 9.8, 8.1, 5.9]  # slopes -2, -2.05, -1.95 per doubling
    e = S.seed_slopes(x, y, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert e.n == 3 and e.estimate == pytest.approx(-2.0) and e.hi < 0 and e.p < 0.001  # the seeds are the n
    assert e.lo < e.estimate < e.hi


def test_lack_of_fit_is_the_f_test_of_a_line_against_one_mean_per_setting():
    """By hand: F = ((SSR_line - SSR_means) / (settings - 2)) / (SSR_means / df_means), seeds as blocks."""
    from scipy import stats as st

    x = np.repeat([2.0, 8.0, 32.0, 128.0], 3)
    seed = np.tile([0, 1, 2], 4)
    bend = np.array([100.0, 60.0, 50.0, 55.0]).repeat(3) + np.tile([0.5, -0.3, -0.2], 4) + noise(1, 12, 0.5)
    p = S.lack_of_fit(x, bend, seed)
    blocks = np.eye(3)[seed][:, 1:]
    line = np.column_stack([np.ones(12), blocks, np.log2(x)])
    means = np.column_stack([blocks, (x[:, None] == np.unique(x)[None, :]).astype(float)])
    ssr = [np.sum((bend - m @ np.linalg.lstsq(m, bend, rcond=None)[0]) ** 2) for m in (line, means)]
    f = ((ssr[0] - ssr[1]) / 2) / (ssr[1] / (12 - 6))
    assert p == pytest.approx(st.f.sf(f, 2, 6)) and p < 0.001
    straight = 100 - 10 * np.log2(x) + noise(2, 12, 0.5)
    assert S.lack_of_fit(x, straight, seed) > 0.05
    assert math.isnan(S.lack_of_fit(x[x < 32], straight[x < 32], seed[x < 32]))  # two settings: a line fits


def test_welch_matches_scipy():
    from scipy import stats as st

    a, b = np.array([10.0, 10.4, 9.8]), np.array([12.0, 13.1, 11.7, 12.2])
    e = S.welch(a, b)
    r = st.ttest_ind(a, b, equal_var=False)
    ci = r.confidence_interval()
    assert e.p == pytest.approx(r.pvalue) and (e.lo, e.hi) == pytest.approx((ci.low, ci.high))


# ---------------------------------------------------------------- dataset complexity, per dimension


def complexity_rows(fm_bpd: list[float], c10_bpd: list[float], seeds: int, discrete=True, spread=0.0) -> pd.DataFrame:
    rows = []
    for ds, vals in (("fashion-mnist", fm_bpd), ("cifar10", c10_bpd)):
        for z, v in zip((2, 8), vals):
            for s, e in enumerate(noise(z + len(ds), seeds, spread)):
                per = v + e
                rows.append(
                    {
                        "dataset": ds,
                        "latent_dim": z,
                        "seed": s,
                        "n_dims": DIMS[ds],
                        "likelihood_discrete": discrete,
                        "neg_elbo": per * DIMS[ds] * (LN2 if discrete else 1.0),
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "fm,c10,seeds,spread,verdict",
    [
        ([2.6, 2.5], [5.6, 5.5], 1, 0.0, F.HOLDS),
        ([2.6, 6.0], [5.6, 5.5], 1, 0.0, F.MIXED),
        ([6.6, 6.5], [5.6, 5.5], 1, 0.0, F.FAILS),
        ([2.6, 2.5], [5.6, 5.5], 3, 0.05, F.HOLDS),
        ([6.6, 6.5], [5.6, 5.5], 3, 0.05, F.FAILS),
        ([5.6, 5.5], [5.6, 5.5], 3, 0.5, F.INCONCLUSIVE),
    ],
)
def test_dataset_complexity(fm, c10, seeds, spread, verdict):
    f = F.dataset_complexity(complexity_rows(fm, c10, seeds, spread=spread))[0]
    assert verdict_is(f, verdict, seeds) and "bits/dim" in f.evidence
    assert ("t-test over seeds" in f.evidence) == (seeds >= 3)  # the seed is the replicate, not latent size × seed
    assert ("no confidence interval" in f.evidence) == (seeds < 3)


def test_dataset_complexity_is_per_dimension_in_the_right_unit():
    cont = complexity_rows([0.5, 0.4], [0.9, 0.8], 1, discrete=False)
    f = F.dataset_complexity(cont)[0]
    assert "nats/dim" in f.evidence and "bits/dim" not in f.evidence and "0.45 vs 0.85" in f.evidence
    mixed = cont.assign(likelihood_discrete=cont["dataset"] == "cifar10")
    assert F.dataset_complexity(mixed)[0].verdict == F.UNKNOWN


# ---------------------------------------------------------------- latent size and collapse


def latent_rows(recon: dict[int, float], seeds: int, spread: float, active: dict[int, list[float]] | None = None):
    rows = []
    for z, r in recon.items():
        for s, e in enumerate(noise(z, seeds, spread)):
            au = active[z][s] if active else z
            rows.append({"dataset": "cifar10", "latent_dim": z, "seed": s, "recon": r + e, "active_units": au})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "recon,seeds,spread,verdict",
    [
        ({2: 300, 8: 250, 32: 240}, 1, 0, F.HOLDS),
        ({2: 300, 8: 200, 32: 240}, 1, 0, F.MIXED),
        ({2: 240, 8: 250, 32: 300}, 1, 0, F.FAILS),
        ({2: 300, 8: 250, 32: 240}, 3, 2, F.HOLDS),
        ({2: 240, 8: 250, 32: 300}, 3, 2, F.FAILS),
        ({2: 250, 8: 250, 32: 250}, 4, 20, F.INCONCLUSIVE),
    ],
)
def test_latent_size_improves_reconstruction(recon, seeds, spread, verdict):
    f = F.latent_size(latent_rows(recon, seeds, spread))[0]
    tested = "slope per doubling" in f.evidence or "each step is tested" in f.evidence
    assert verdict_is(f, verdict, seeds) and tested == (seeds >= 3)


@pytest.mark.parametrize(
    "big,verdict",
    [
        ([16, 17, 18], F.HOLDS),
        ([32, 32, 32], F.FAILS),
        ([31, 31, 31], F.MIXED),
        ([20, 32, 31], F.INCONCLUSIVE),
        ([20], F.HOLDS),
        ([31], F.MIXED),
        ([32], F.FAILS),
    ],
)
def test_posterior_collapse(big, verdict):
    seeds = len(big)
    t = latent_rows({2: 300, 32: 240}, seeds, 0, active={2: [2] * seeds, 32: big})
    f = next(f for f in F.latent_size(t) if "not fully used" in f.claim)
    assert verdict_is(f, verdict, seeds)
    if seeds >= 3:  # a share's interval is over seeds (units of one model are not independent), inside [0, 1]
        found = re.search(r"t interval over seeds \[([\d.]+)%, ([\d.]+)%\]", f.evidence)
        lo, hi = (float(v) / 100 for v in found.groups())
        assert 0 <= lo <= sum(big) / (32 * seeds) + 5e-4 and sum(big) / (32 * seeds) - 5e-4 <= hi <= 1


# ---------------------------------------------------------------- beta


def beta_rows(kl: list[float], recon: list[float], seeds: int, spread: float) -> pd.DataFrame:
    rows = []
    for b, k, r in zip((0.5, 1.0, 4.0), kl, recon):
        for s, (e1, e2) in enumerate(zip(noise(int(b * 10), seeds, spread), noise(int(b * 10) + 1, seeds, spread))):
            rows.append({"dataset": "cifar10", "latent_dim": 32, "beta": b, "seed": s, "kl": k + e1, "recon": r + e2})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "kl,recon,seeds,spread,verdict",
    [
        ([60, 40, 10], [100, 110, 150], 1, 0, F.HOLDS),
        ([60, 40, 10], [100, 160, 150], 1, 0, F.MIXED),  # both ends move as claimed, not monotone
        ([60, 40, 10], [150, 110, 100], 1, 0, F.FAILS),  # KL falls while reconstruction improves: no trade-off
        ([10, 40, 60], [100, 110, 150], 1, 0, F.FAILS),
        ([60, 40, 10], [100, 110, 150], 3, 1, F.HOLDS),
        ([60, 40, 10], [100, 100, 100], 3, 5, F.MIXED),  # KL falls significantly, reconstruction cannot tell
        ([60, 40, 10], [150, 110, 100], 3, 1, F.FAILS),
        ([40, 40, 40], [100, 100, 100], 3, 5, F.INCONCLUSIVE),
    ],
)
def test_beta_tradeoff(kl, recon, seeds, spread, verdict):
    f = F.beta_tradeoff(beta_rows(kl, recon, seeds, spread))[0]
    assert verdict_is(f, verdict, seeds)
    assert F.beta_tradeoff(None)[0].verdict == F.UNKNOWN


# ---------------------------------------------------------------- organisation against baselines


def org_rows(trained: list[float], untrained: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": "fashion-mnist",
                "latent_dim": 32,
                "seed": s,
                "probe_accuracy": a,
                "probe_accuracy_untrained": u,
                "probe_accuracy_pca": 0.70,
                "chance_accuracy": 0.114,
            }
            for s, (a, u) in enumerate(zip(trained, untrained))
        ]
    )


@pytest.mark.parametrize(
    "trained,untrained,verdict",
    [
        ([0.80], [0.72], F.HOLDS),
        ([0.73], [0.72], F.MIXED),
        ([0.70], [0.72], F.FAILS),
        ([0.80, 0.81, 0.79], [0.72, 0.73, 0.72], F.HOLDS),
        ([0.74, 0.70, 0.73], [0.72, 0.73, 0.71], F.INCONCLUSIVE),
        ([0.60, 0.61, 0.62], [0.72, 0.73, 0.71], F.FAILS),
    ],
)
def test_organisation_is_measured_against_an_untrained_encoder(trained, untrained, verdict):
    f = F.organisation(org_rows(trained, untrained))[0]
    assert verdict_is(f, verdict, len(trained))
    assert "chance (most frequent class) 11.4%" in f.evidence and "70.0% PCA" in f.evidence
    assert "at initial weights" in f.evidence and "latent_dim 32:" in f.evidence


def test_organisation_without_a_baseline_says_so():
    t = org_rows([0.8], [0.7]).drop(columns=["probe_accuracy_untrained"])
    assert F.organisation(t)[0].verdict == F.UNKNOWN


def test_generation_findings():
    lt = pd.DataFrame(
        {
            "dataset": ["cifar10", "fashion-mnist", "fashion-mnist"],
            "latent_dim": [32, 8, 32],
            "seed": [0, 0, 0],
            "fd_prior": [50.0, 20.0, 12.0],
            "fd_gmm": [30.0, 25.0, 10.0],
            "conditional_accuracy": [0.15, 0.4, 0.8],
            "chance_accuracy": [0.1, 0.1, 0.1],
        }
    )
    by = {f.claim.split(":")[0] + (" mix" if "mixture" in f.claim else " cond"): f for f in F.generation(lt)}
    assert (
        verdict_is(by["cifar10 mix"], F.HOLDS, 1)
        and "latent_dim 32: 50 N(0, I) vs 30 GMM" in by["cifar10 mix"].evidence
    )
    assert verdict_is(by["fashion-mnist mix"], F.MIXED, 2)  # worse at 8, better at 32: one run each
    assert verdict_is(F.generation(lt.assign(fd_gmm=[60.0, 25.0, 15.0]))[0], F.FAILS, 1)
    # conditional generation rests on one scored run: the lean, no verdict
    assert verdict_is(by["cifar10 cond"], F.FAILS, 1) and "15%" in by["cifar10 cond"].evidence
    assert verdict_is(by["fashion-mnist cond"], F.HOLDS, 1) and "latent_dim 32" in by["fashion-mnist cond"].evidence
    assert verdict_is(F.generation(lt.assign(conditional_accuracy=[0.3, 0.3, 0.3]))[-1], F.MIXED, 1)
    assert F.generation(lt.drop(columns=["fd_gmm"])) == []


@pytest.mark.parametrize(
    "acc, verdict",
    [
        ([0.70, 0.72, 0.74], F.HOLDS),  # above one half
        ([0.40, 0.41, 0.39], F.MIXED),  # above twice chance (20 %), below one half
        ([0.12, 0.10, 0.11], F.FAILS),  # below one half, not above twice chance
        ([0.20, 0.80, 0.50], F.INCONCLUSIVE),
    ],
)
def test_conditional_generation_scored_on_every_seed(acc, verdict):
    lt = pd.DataFrame({"dataset": "cifar10", "latent_dim": 32, "seed": [0, 1, 2], "conditional_accuracy": acc})
    lt = lt.assign(fd_prior=50.0, fd_gmm=[30.0, 31.0, 29.5])
    mix, cond = F.generation(lt)
    assert mix.verdict == F.HOLDS and "paired t-test" in mix.evidence
    assert cond.verdict == verdict, cond.evidence


def test_organisation_averages_latent_sizes_within_each_seed():
    t = pd.concat(
        [
            org_rows([0.55, 0.56, 0.54], [0.30, 0.31, 0.29]).assign(latent_dim=2, probe_accuracy_pca=0.35),
            org_rows([0.77, 0.78, 0.76], [0.74, 0.75, 0.73]).assign(latent_dim=32, probe_accuracy_pca=0.65),
        ]
    )
    f = F.organisation(t)[0]
    assert f.verdict == F.HOLDS and "n = 3" in f.evidence and "latent_dim 2: 55.0% trained vs 30.0%" in f.evidence
    assert "trained minus PCA of the pixels" in f.evidence


def test_beats_pca_only_with_latent_sizes_as_replicates_is_not_holds():
    """Four latent sizes × three seeds: over the 12 runs trained − PCA is 'significant', but the seeds — the
    replicates — disagree (+4, +3, −0.5 points): the PCA half of the claim is inconclusive, not 'holds'."""
    per_seed = {0: 0.04, 1: 0.03, 2: -0.005}
    t = pd.concat(
        [
            org_rows([0.80, 0.80, 0.80], [0.60, 0.61, 0.59]).assign(
                latent_dim=z, probe_accuracy_pca=[0.80 - per_seed[s] + j * 1e-3 for s in range(3)]
            )
            for j, z in enumerate((2, 8, 32, 128))
        ]
    )
    pooled = (t["probe_accuracy"] - t["probe_accuracy_pca"]) * 100
    assert S.paired(pooled).p < 0.01  # latent sizes counted as replicates: 'significant'
    f = F.organisation(t)[0]
    assert f.verdict == F.MIXED and "n = 3" in f.evidence, f.evidence  # beats the untrained encoder only


@pytest.mark.parametrize(
    "pca,verdict",
    [
        ([0.60, 0.61, 0.59], F.HOLDS),  # beats the untrained encoder and PCA
        ([0.80, 0.76, 0.79], F.MIXED),  # beats the untrained encoder; PCA cannot tell
        ([0.90, 0.91, 0.92], F.FAILS),  # PCA of the pixels is significantly better
    ],
)
def test_organisation_must_beat_both_baselines(pca, verdict):
    t = org_rows([0.78, 0.79, 0.77], [0.60, 0.61, 0.59]).assign(probe_accuracy_pca=pca, silhouette=-0.05)
    f = F.organisation(t)[0]
    assert f.verdict == verdict, f.evidence
    assert "clustering check, not in the verdict" in f.evidence


@pytest.mark.parametrize(
    "kl,seeds,sd,verdict",
    [
        ({2: 5, 8: 15, 32: 25}, 3, 0.3, F.HOLDS),
        ({2: 25, 8: 15, 32: 5}, 3, 0.3, F.FAILS),
        ({2: 10, 8: 10, 32: 10}, 3, 0.005, V.NEGLIGIBLE),  # the slope is shown within ±0.1 nat (1 % of the level)
        ({2: 10, 8: 10, 32: 10}, 5, 8.0, F.INCONCLUSIVE),  # too noisy to show either
        ({2: 5, 8: 15, 32: 30}, 1, 0.0, F.HOLDS),
    ],
)
def test_a_larger_latent_costs_compression(kl, seeds, sd, verdict):
    rows = latent_rows({2: 300, 8: 250, 32: 240}, seeds, 2)
    rows["kl"] = [kl[z] + e for z, e in zip(rows["latent_dim"], noise(7, len(rows), sd))]
    (f,) = F.compression_cost(rows)
    assert verdict_is(f, verdict, seeds), f.evidence
    flat = len(set(kl.values())) == 1
    assert ("No effect: within ±" in f.evidence) == (flat and verdict == V.NEGLIGIBLE)  # δ: 0.1 nats per doubling


def test_where_reconstruction_stops_improving():
    """Gains 2→8 large, 8→32 none: the curve bends, so it is judged step by step and only partly holds."""
    f = F.latent_size(latent_rows({2: 300, 8: 250, 32: 250}, 3, 1))[0]
    assert f.verdict == F.MIXED and "does not fit" in f.evidence, f.evidence
    assert "recon 2→8: as claimed" in f.evidence and "recon 8→32: no" in f.evidence


def test_a_curve_that_improves_then_reverses_is_not_holds_and_says_where_it_stops():
    """Better up to 32, worse at 128 (by more than δ, 1 % of the level per doubling); a straight line through it
    would 'hold'."""
    seed_offsets = {0: 3.0, 1: -1.0, 2: -2.0}  # seeds differ in level, consistently across sizes
    rows = pd.DataFrame(
        [
            {"dataset": "fashion-mnist", "latent_dim": z, "seed": s, "recon": r + o + e}
            for z, r in {2: 2120, 8: 1928, 32: 1885, 128: 1960}.items()
            for (s, o), e in zip(seed_offsets.items(), noise(z, 3, 0.5))
        ]
    )
    f = F.latent_size(rows)[0]
    assert f.verdict == F.MIXED, f.evidence
    assert "recon 32→128: reversed" in f.evidence and "recon 2→8: as claimed" in f.evidence
    assert S.seed_slopes(rows["latent_dim"], rows["recon"], rows["seed"]).sign(-1) == 1  # a slope would say 'holds'


@pytest.mark.parametrize(
    "probe,knn,sil,sd,verdict",
    [
        ((0.5, 0.6, 0.7), (0.4, 0.5, 0.6), (0.0, 0.1, 0.2), 0.01, F.HOLDS),
        ((0.7, 0.6, 0.5), (0.6, 0.5, 0.4), (0.2, 0.1, 0.0), 0.01, F.FAILS),  # the organisation half goes the other way
        ((0.5, 0.6, 0.7), (0.6, 0.5, 0.4), (0.1, 0.1, 0.1), 0.01, F.MIXED),
        # every metric shown within 1 % of its level per doubling: no effect
        ((0.6, 0.6, 0.6), (0.5, 0.5, 0.5), (0.1, 0.1, 0.1), 0.0005, V.NEGLIGIBLE),
        ((0.6, 0.6, 0.6), (0.5, 0.5, 0.5), (0.1, 0.1, 0.1), 0.05, F.INCONCLUSIVE),  # too noisy to tell
    ],
)
def test_larger_beta_organises_the_latent_space(probe, knn, sil, sd, verdict):
    rows = beta_rows([60, 40, 10], [100, 110, 150], 3, 1)
    betas = sorted(rows["beta"].unique())
    for i, (m, vals) in enumerate((("probe_accuracy", probe), ("knn_accuracy", knn), ("silhouette", sil))):
        rows[m] = [vals[betas.index(b)] + e for b, e in zip(rows["beta"], noise(50 + i, len(rows), sd))]
    (f,) = F.beta_organisation(rows)
    assert f.verdict == verdict, f.evidence
    if sil == (0.1, 0.1, 0.1):  # flat: shown negligible only when precise
        assert ("No effect: within ±0.006 per doubling" in f.evidence) == (sd == 0.0005), f.evidence
    assert "holds by construction" in F.beta_tradeoff(rows)[0].claim


# ---------------------------------------------------------------- model families


def family_rows(gap_ref, gap_iaf, nll_ref, nll_vamp, au_ref, au_fb):
    rows = []
    for s, (g0, g1, n0, n1, a0, a1) in enumerate(zip(gap_ref, gap_iaf, nll_ref, nll_vamp, au_ref, au_fb)):
        base = {"dataset": "cifar10", "seed": s, "objective": "elbo", "kl_schedule": "linear"}
        rows += [
            {
                **base,
                "posterior": "gaussian",
                "prior": "standard",
                "neg_elbo": n0 + g0,
                "iwae_nll": n0,
                "active_units": a0,
            },
            {**base, "posterior": "iaf", "prior": "standard", "neg_elbo": n0 + g1, "iwae_nll": n0, "active_units": a0},
            {**base, "posterior": "gaussian", "prior": "vamp", "neg_elbo": n1 + g0, "iwae_nll": n1, "active_units": a0},
            {
                **base,
                "posterior": "gaussian",
                "prior": "standard",
                "objective": "free_bits",
                "neg_elbo": n0 + g0,
                "iwae_nll": n0,
                "active_units": a1,
            },
        ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "gap_iaf,nll_vamp,au_fb,want",
    [
        ([5.0, 5.2, 4.9], [990, 991, 989], [14, 15, 14], [F.HOLDS, F.HOLDS, F.HOLDS]),
        ([12.0, 12.5, 11.8], [1010, 1011, 1012], [6, 6, 7], [F.FAILS, F.FAILS, F.FAILS]),
        ([9.0, 11.0, 10.0], [1010, 990, 1000], [9, 7, 8], [F.INCONCLUSIVE, F.INCONCLUSIVE, F.INCONCLUSIVE]),
    ],
)
def test_family_findings_against_the_reference_vae(gap_iaf, nll_vamp, au_fb, want):
    t = family_rows([10.0, 10.1, 9.9], gap_iaf, [1000.0, 1000.5, 999.5], nll_vamp, [8, 8, 8], au_fb)
    fs = M.families(t)
    assert [f.verdict for f in fs] == want
    assert "IAF" in fs[0].claim and "VampPrior" in fs[1].claim and "free bits" in fs[2].claim
    assert "unpaired" in fs[0].evidence and "Welch" in fs[0].evidence  # different models: not paired by seed


def test_family_findings_without_seeds_or_families():
    t = family_rows([10.0], [5.0], [1000.0], [990.0], [8], [14])
    assert (
        all(verdict_is(f, F.HOLDS, 1) for f in M.families(t)) and "no confidence interval" in M.families(t)[0].evidence
    )
    assert M.families(t.drop(columns=["posterior", "prior", "objective", "kl_schedule"])) == []


def test_the_original_claims_read_only_the_reference_vae():
    """A families study: its IAF and VampPrior runs must not enter 'Fashion-MNIST is easier' (here they would
    flip it), while the family findings compare them with the reference."""
    rows = []
    for s in range(3):
        for ds, ref, other in (("fashion-mnist", 3.0, 9.0), ("cifar10", 5.0, 5.0)):
            n = {"fashion-mnist": 784, "cifar10": 3072}[ds] * LN2
            base = {
                "dataset": ds,
                "latent_dim": 16,
                "seed": s,
                "n_dims": n / LN2,
                "likelihood_discrete": True,
                "objective": "elbo",
                "kl_schedule": "linear",
                "prior": "standard",
                "active_units": 16,
                "recon": 100.0 + s,
                "kl": 10.0,
            }
            rows += [
                {**base, "posterior": "gaussian", "neg_elbo": (ref + 0.01 * s) * n, "iwae_nll": ref * n - 5},
                {**base, "posterior": "iaf", "neg_elbo": (other + 0.01 * s) * n, "iwae_nll": other * n - 1},
            ]
    fs = F.compute(pd.DataFrame(rows), None)
    easy = next(f for f in fs if "easier" in f.claim)
    assert easy.verdict == F.HOLDS and "3.01 vs 5.01 bits/dim" in easy.evidence
    assert any("IAF" in f.claim for f in fs)


@pytest.mark.parametrize(
    "shares,want",
    [
        ([0.8, 0.82, 0.79], F.HOLDS),  # clearly above one half over 3 seeds
        ([0.2, 0.22, 0.19], F.FAILS),
        ([0.3, 0.7, 0.52], F.INCONCLUSIVE),  # the seeds disagree: no significant effect
        ([0.7, 0.3], F.MIXED),  # too few seeds for statistics, and they split
        ([0.7], F.HOLDS),
    ],
)
def test_the_kl_share_of_the_finest_groups_can_come_out_every_way(shares, want):
    rows = runs(
        [{"seed": i, "kl_share_finest": s} for i, s in enumerate(shares)], dataset="cifar10", arch="hierarchical"
    )
    [f] = M.kl_groups(rows)
    assert verdict_is(f, want, len(shares)) and "finest" in f.claim
    assert M.kl_groups(rows.drop(columns=["kl_share_finest"])) == []


def test_architecture_findings_pair_each_network_with_the_conv_reference():
    """bits/dim at the same budget: the hierarchical model lower in every seed (holds), the resnet higher (does not
    hold); and the original claims see only the conv runs, while a study of one other network keeps its runs."""
    rows = []
    for s in range(3):
        for arch, bpd in (("conv", 5.0), ("resnet", 5.5), ("hierarchical", 4.0)):
            rows.append(
                {
                    "dataset": "cifar10",
                    "seed": s,
                    "arch": arch,
                    "bpd_iwae": bpd + 0.01 * s,
                    "neg_elbo": 1.0,
                    "iwae_nll": 1.0,
                }
            )
    fs = M.families(pd.DataFrame(rows))
    verdicts = {("residual" if "residual" in f.claim else "hierarchical"): f.verdict for f in fs}
    assert verdicts == {"residual": F.FAILS, "hierarchical": F.HOLDS}
    df = pd.DataFrame(rows)
    assert set(F.reference_only(df)["arch"]) == {"conv"}
    only_mlp = df[df["arch"] == "resnet"]
    assert len(F.reference_only(only_mlp)) == 3


@pytest.mark.parametrize(
    "fd_vamp,want", [([3.0, 3.1, 2.9], F.HOLDS), ([6.0, 6.2, 5.9], F.FAILS), ([3.0, 6.0, 5.0], F.INCONCLUSIVE)]
)
def test_the_learned_prior_sample_quality_finding(fd_vamp, want):
    t = family_rows(
        [10.0, 10.1, 9.9], [10.0, 10.1, 9.9], [1000.0, 1000.5, 999.5], [1000.0, 1000.5, 999.5], [8, 8, 8], [8, 8, 8]
    )
    t["fd_prior"] = 5.0 + 0.01 * t["seed"]
    vamp = t["prior"] == "vamp"
    t.loc[vamp, "fd_prior"] = fd_vamp
    [f] = [f for f in M.families(t) if "Fréchet" in f.claim]
    assert f.verdict == want and "VampPrior" in f.claim


# ---------------------------------------------------------------- disentanglement claims


def dis_runs(mig_of, dci_of, sd: float, seeds=(0, 1, 2), betas=(1.0, 4.0, 16.0)) -> pd.DataFrame:
    """β-VAE runs on shapes2d whose MIG and DCI disentanglement follow mig_of(β), dci_of(β) plus seed noise."""
    rows = []
    for i, b in enumerate(betas):
        for s in seeds:
            e = noise(100 * i + s, 2, sd)
            rows.append(
                dict(
                    dataset="shapes2d",
                    objective="elbo",
                    beta=b,
                    seed=s,
                    mig=mig_of(b) + e[0],
                    dci_disentanglement=dci_of(b) + e[1],
                )
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "mig_of, dci_of, sd, verdict",
    [
        (lambda b: 0.05 * math.log2(b), lambda b: 0.04 * math.log2(b), 0.01, F.HOLDS),
        (lambda b: 0.05 * math.log2(b), lambda b: 0.3, 0.01, F.MIXED),  # MIG rises, DCI flat
        (lambda b: 0.2 - 0.03 * math.log2(b), lambda b: 0.3 - 0.03 * math.log2(b), 0.01, F.FAILS),  # both fall
        # flat while the seeds spread widely: absence of evidence, not evidence of absence
        (lambda b: 0.1, lambda b: 0.1, 0.08, F.INCONCLUSIVE),
    ],
)
def test_larger_beta_disentangles_every_verdict(mig_of, dci_of, sd, verdict):
    (f,) = M.beta_disentangles("shapes2d", dis_runs(mig_of, dci_of, sd))
    assert f.verdict == verdict, f.evidence
    assert "slope per doubling of beta" in f.evidence or "each step is tested" in f.evidence


def test_larger_beta_disentangles_inconclusive():
    """Means rise by 0.2 over the β range, less than the seeds' spread, and the seeds disagree in direction."""
    values = {1.0: [0.0, 0.4, 0.2], 4.0: [0.35, 0.1, 0.3], 16.0: [0.15, 0.5, 0.45]}
    df = pd.DataFrame(
        [
            dict(dataset="shapes2d", objective="elbo", beta=b, seed=s, mig=v, dci_disentanglement=v)
            for b, vs in values.items()
            for s, v in enumerate(vs)
        ]
    )
    (f,) = M.beta_disentangles("shapes2d", df)
    assert f.verdict == F.INCONCLUSIVE, f.evidence


def test_larger_beta_disentangles_without_statistics_and_without_data():
    rising = dis_runs(lambda b: 0.05 * math.log2(b), lambda b: 0.04 * math.log2(b), 0.0, seeds=(0,))
    (f,) = M.beta_disentangles("shapes2d", rising)
    assert verdict_is(f, F.HOLDS, 1) and "no confidence interval" in f.evidence
    (f,) = M.beta_disentangles("shapes2d", rising[rising["beta"] == 1.0])
    assert f.verdict == F.UNKNOWN


def obj_runs(level: dict[str, float | tuple[float, float]], sd: float, k: int = 3) -> pd.DataFrame:
    """Two objectives at two weights each; level: the objective's mean score, or one per weight."""
    weights = {"elbo": ("beta", [1.0, 4.0]), "factor_vae": ("factor_gamma", [10.0, 30.0])}
    rows = []
    for j, (o, means) in enumerate(level.items()):
        key, ws = weights[o]
        for w, mean in zip(ws, means if isinstance(means, tuple) else (means, means)):
            for s in range(k):
                e = noise(1000 * j + 10 * int(w) + s, 2, sd)
                rows.append(
                    dict(
                        dataset="shapes2d",
                        objective=o,
                        **{key: w},
                        seed=s,
                        mig=mean + e[0],
                        dci_disentanglement=mean + e[1],
                    )
                )
    df = pd.DataFrame(rows)
    return df.fillna({"beta": 1.0, "factor_gamma": 10.0})


@pytest.mark.parametrize(
    "level, sd, k, verdict",
    [
        ({"elbo": 0.1, "factor_vae": 0.4}, 0.02, 3, F.HOLDS),
        # the seeds spread more than the objectives differ: no test says the objectives do not matter
        ({"elbo": 0.1, "factor_vae": 0.12}, 0.1, 3, F.INCONCLUSIVE),
        # the weights move the scores: grouped by setting (objective × weight), the setting matters more than the seed
        ({"elbo": (0.0, 0.4), "factor_vae": (0.3, 0.5)}, 0.02, 3, F.HOLDS),
        ({"elbo": 0.1, "factor_vae": 0.4}, 0.02, 2, F.HOLDS),  # two seeds: spreads compared without a test
    ],
)
def test_objective_matters_more_than_the_seed_every_verdict(level, sd, k, verdict):
    (f,) = M.objective_vs_seed("shapes2d", obj_runs(level, sd, k))
    assert verdict_is(f, verdict, k), f.evidence
    assert ("ICC" in f.evidence) == (k >= 3)


def test_objective_vs_seed_partly_and_unknown():
    df = obj_runs({"elbo": 0.1, "factor_vae": 0.4}, 0.02)
    df.loc[df["objective"] == "factor_vae", "dci_disentanglement"] -= 0.3  # DCI: no difference between objectives
    (f,) = M.objective_vs_seed("shapes2d", df)
    assert f.verdict == F.MIXED
    (f,) = M.objective_vs_seed("shapes2d", df[df["objective"] == "elbo"])
    assert f.verdict == F.UNKNOWN
    # the main weight of each objective is its own column, the default where a table lacks it
    w = M.main_weight(df)
    assert set(w[df["objective"] == "factor_vae"]) == {10.0, 30.0} and set(w[df["objective"] == "elbo"]) == {1.0, 4.0}
    assert M.disentanglement(df.drop(columns=["mig"])) == []


def test_holm_adjusts_the_study_family_as_statsmodels_does_and_can_change_a_verdict():
    """Three findings' tests, p = 0.01, 0.02 and 0.04: raw, all three hold; Holm (statsmodels) multiplies by 3, 2
    and 1 in order, so 0.03, 0.04, 0.04 — still below 0.05. A family where it matters turns a raw 0.03 inconclusive."""
    from statsmodels.stats.multitest import multipletests

    fs = [V.tested(f"c{i}", "e.", [(p, +1)]) for i, p in enumerate([0.01, 0.02, 0.04])]
    assert [f.verdict for f in fs] == [F.HOLDS] * 3
    adjusted = V.holm(fs)
    assert [f.verdict for f in adjusted] == [F.HOLDS] * 3
    want = multipletests([0.01, 0.02, 0.04], method="holm")[1]
    assert want.tolist() == pytest.approx([0.03, 0.04, 0.04])
    assert "Holm-adjusted p over the study's 3 tests: 0.03." in adjusted[0].evidence
    # a: 0.03 is the second smallest of three p-values: x 2 = 0.06, no longer significant; b's first part stays
    mixed = V.holm(
        [
            V.tested("a", "e.", [(0.03, +1)]),
            V.tested("b", "e.", [(0.001, -1), (0.5, +1)], "all"),
            V.Finding("no test", "e.", F.UNKNOWN),
        ]
    )
    assert V.tested("a", "e.", [(0.03, +1)]).verdict == F.HOLDS
    assert [f.verdict for f in mixed] == [F.INCONCLUSIVE, F.FAILS, F.UNKNOWN]
    (one,) = V.holm(fs[:1])  # a single test: nothing to adjust
    assert (one.verdict, one.evidence, one.adjusted) == (fs[0].verdict, fs[0].evidence, (0.01,))


def test_a_report_names_the_claims_its_grid_cannot_test_apart():
    one_dataset = complexity_rows([2.6, 2.5], [5.6, 5.5], 3, spread=0.05)
    one_dataset = one_dataset[one_dataset["dataset"] == "cifar10"]
    found = [F.dataset_complexity(one_dataset)[0], V.tested("c", "e.", [(0.01, +1)])]
    testable, untestable = V.split_testable(found)
    assert [f.claim for f in untestable] == [found[0].claim] and testable == [found[1]]
    assert found[0].evidence.startswith("needs")
    # a β sweep of one dataset only: the other dataset's β claims are named in the line, with the dataset
    both = complexity_rows([2.6, 2.5], [5.6, 5.5], 3, spread=0.05)
    beta = both[both["dataset"] == "fashion-mnist"].assign(beta=2.0)
    missing = F.beta_missing(both, beta)
    assert [f.claim.split(":")[0] for f in missing] == ["cifar10"] and missing[0].verdict == F.UNKNOWN
    _, untestable = V.split_testable(missing)
    assert "no β sweep of cifar10" in V.untestable_text(untestable)
    assert F.beta_missing(both, both) == [] and F.beta_missing(both, None) == []


def test_icc_is_the_share_of_variance_between_groups_and_tests_one_half():
    rng = np.random.default_rng(0)
    same = [rng.normal(0, 1, 6) for _ in range(30)]  # no variance between groups
    e = S.icc(same)
    assert e.sign(+1) == -1 and e.hi + 0.5 < 0.5  # significantly below one half
    apart = [rng.normal(10 * i, 1, 6) for i in range(10)]
    e = S.icc(apart)
    assert e.sign(+1) == +1 and e.lo + 0.5 > 0.9
    # balanced groups: the textbook ANOVA estimate (MSB - MSW) / (MSB + (k - 1) MSW)
    x = np.array(apart)
    msb = 6 * x.mean(1).var(ddof=1)
    msw = x.var(1, ddof=1).mean()
    assert e.estimate + 0.5 == pytest.approx((msb - msw) / (msb + 5 * msw))


def test_equivalence_matches_statsmodels_two_one_sided_tests():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(3)
    x = rng.normal(5, 1, 8)
    y = x + rng.normal(0.1, 0.3, 8)
    for delta in (0.2, 0.5, 1.0):
        assert S.tost(S.paired(x - y), delta) == pytest.approx(ttost_paired(x, y, -delta, delta)[0])
    assert S.tost(S.paired([0.1, 0.1, 0.1]), 0.5) == 0.0 and S.tost(S.paired([0.9, 0.9, 0.9]), 0.5) == 1.0


def test_no_effect_by_equivalence_survives_holm_and_says_so():
    precise = V.tested("flat", "e.", [V.Test(0.8, +1, 0.001, "±1 nats")])
    noisy = V.tested("noisy", "e.", [V.Test(0.8, +1, 0.3, "±1 nats")])
    assert precise.verdict == V.NEGLIGIBLE and "No effect: within ±1 nats" in precise.evidence
    assert noisy.verdict == F.INCONCLUSIVE and "No effect" not in noisy.evidence
    a, b = V.holm([precise, noisy])  # equivalence p adjusted among themselves: 0.002 and 0.3
    assert a.verdict == V.NEGLIGIBLE and a.evidence.count("No effect") == 1 and "p = 0.002" in a.evidence
    # significant AND shown within ±δ: an effect that small is no effect, whatever its p (never 'holds')
    tiny = V.tested("tiny", "e.", [V.Test(1e-6, +1, 1e-4, "±1 nats")])
    assert tiny.verdict == V.NEGLIGIBLE and V.holm([tiny, noisy])[0].verdict == V.NEGLIGIBLE
    assert b.verdict == F.INCONCLUSIVE


# ---------------------------------------------------------------- "no effect" by equivalence, for every finding that states δ


def test_no_effect_outcomes_of_every_finding_with_a_smallest_effect():
    """Flat data measured precisely: each finding says 'no effect (negligible)' with 'No effect: within ±δ', δ from
    the data's scale — and the same flat data measured noisily stays inconclusive (tested above, finding by finding)."""
    flat_recon = latent_rows({2: 250, 8: 250, 32: 250}, 3, 0.01)  # δ: 1 % of 250 nats = 2.5 per doubling
    (f,) = [x for x in F.latent_size(flat_recon) if "reconstruction" in x.claim]
    assert f.verdict == V.NEGLIGIBLE and "No effect: within ±" in f.evidence, f.evidence
    same = complexity_rows([3.0, 3.0], [3.0, 3.0], 3, spread=0.001)
    (f,) = F.dataset_complexity(same)
    assert f.verdict == V.NEGLIGIBLE and "No effect: within ±0.03 bits/dim" in f.evidence, f.evidence
    equal = org_rows([0.70, 0.701, 0.699], [0.70, 0.70, 0.70])  # trained = untrained = PCA
    (f,) = F.organisation(equal)
    assert f.verdict == V.NEGLIGIBLE and f.evidence.count("within ±0.7 points") == 2, f.evidence
    # MIG's and DCI's δ: 1 % of their level (0.1) per doubling
    flat_dis = dis_runs(lambda b: 0.1, lambda b: 0.1, 0.001, seeds=(0, 1, 2, 3, 4))
    (f,) = M.beta_disentangles("shapes2d", flat_dis)
    assert f.verdict == V.NEGLIGIBLE and "No effect: within ±0.001 per doubling" in f.evidence, f.evidence


def test_the_objective_matters_less_than_the_seed_when_the_icc_is_significantly_below_one_half():
    """Six objectives with the same mean score and seeds that spread: the ICC's interval lies below one half."""
    objectives = ["elbo", "beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii", "free_bits"]
    rows = pd.DataFrame(
        [
            dict(dataset="shapes2d", objective=o, seed=s, mig=0.1 + e[0], dci_disentanglement=0.1 + e[1])
            for j, o in enumerate(objectives)
            for s in range(6)
            for e in [noise(100 * j + s, 2, 0.1)]
        ]
    )
    (f,) = M.objective_vs_seed("shapes2d", rows)
    assert f.verdict == F.FAILS, f.evidence
    assert "share of variance between settings (ICC)" in f.evidence


_STANDARD = Path(__file__).resolve().parents[1] / "docs" / "studies" / "standard" / "results.csv"


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d.drop(columns=["seed"]), "no seed column"),
        (
            lambda d: d.assign(latent_dim=d["latent_dim"].astype(object).where(d.index != 3, "big")),
            "latent_dim in row 5",
        ),
        (lambda d: d.assign(recon=d["recon"].where(d["dataset"] != "cifar10", -np.inf)), "recon in row 14"),
        (lambda d: d.assign(seed=d["seed"].where(d.index != 0, np.nan)), "seed in row 2"),
    ],
)
def test_findings_on_a_malformed_table_say_one_line_naming_column_and_row(change, words, tmp_path, capsys):
    path = tmp_path / "results.csv"
    change(pd.read_csv(_STANDARD)).to_csv(path, index=False)
    assert main(["findings", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


@pytest.mark.parametrize(
    "column", ["recon", "kl", "bpd_elbo", "neg_elbo", "active_units", "probe_accuracy", "silhouette"]
)
def test_findings_without_a_metric_or_with_it_empty_are_drawn_from_the_rest(column, tmp_path, capsys):
    df = pd.read_csv(_STANDARD)
    for i, table in enumerate((df.drop(columns=[column]), df.assign(**{column: np.nan}))):
        path = tmp_path / f"r{i}.csv"
        table.to_csv(path, index=False)
        assert main(["findings", str(path)]) == 0
        assert "**" in capsys.readouterr().out


def test_the_glance_rows_and_forest_points_carry_the_verdict_effect_and_delta():
    f = V.holm(
        [V.tested("c: x.", "e.", [V.effect_test(S.paired([2.0, 2.1, 1.9]), -1, 0.5, "nats")], topic="x", dataset="c")]
    )[0]
    (row,) = V.glance_rows([f])
    assert row["verdict"] == F.FAILS and row["claim"] == "x" and row["dataset"] == "c" and "(δ ±0.5)" in row["effect"]
    (pt,) = V.forest_points([f])  # claimed negative, measured positive: left of zero, in units of δ
    assert pt["estimate"] == pytest.approx(-4.0) and pt["lo"] < pt["estimate"] < pt["hi"] < -1


# ---------------------------------------------------------------- comparison claims as data (study.contrasts)


def _contrast_rows(gaps: dict[int, float], settings=(1, 4), level=0.5) -> pd.DataFrame:
    """One dataset, seeds × β settings: the score `level + gap(seed)`, its baseline `level`."""
    return pd.DataFrame(
        [
            {"dataset": "shapes", "beta": b, "seed": s, "score": level + g + 1e-4 * j, "score_base": level}
            for s, g in gaps.items()
            for j, b in enumerate(settings)
        ]
    )


_SCORE = C.Contrast(
    topic="the score beats its baseline",
    text="{ds}: the score beats its baseline.",
    metric="score",
    words="model",
    baselines=(C.Baseline("score_base", "baseline", "the baseline", "model − baseline"),),
    what="a score",
    over="beta",
)


@pytest.mark.parametrize(
    "gaps, verdict",
    [
        ({0: 0.10, 1: 0.11, 2: 0.09}, F.HOLDS),
        ({0: -0.10, 1: -0.11, 2: -0.09}, F.FAILS),
        ({0: 0.0001, 1: -0.0001, 2: 0.0}, V.NEGLIGIBLE),  # within δ = 1 % of the score's level (0.005)
        ({0: 0.10, 1: -0.08, 2: 0.01}, F.INCONCLUSIVE),
    ],
)
def test_a_new_contrast_is_one_entry_with_every_outcome(gaps, verdict):
    """A Contrast over another axis (β) works from its entry alone: the settings are averaged within each seed (n is
    the number of seeds, not of runs), and δ is 1 % of the metric's level."""
    (f,) = C.contrast_findings(_SCORE, _contrast_rows(gaps))
    assert f.verdict == verdict, f.evidence
    assert "n = 3" in f.evidence and "averaged over beta within each seed" in f.evidence
    assert "beta 1: " in f.evidence and "beta 4: " in f.evidence and "model minus the baseline" in f.evidence


def test_a_contrast_without_enough_seeds_leans_and_without_its_baseline_is_untestable():
    (f,) = C.contrast_findings(_SCORE, _contrast_rows({0: 0.1}))
    assert f.verdict == F.UNKNOWN and "lean 'holds'" in f.evidence
    (f,) = C.contrast_findings(_SCORE, _contrast_rows({0: 0.1, 1: 0.1, 2: 0.1}).drop(columns=["score_base"]))
    assert f.verdict == F.UNKNOWN and f.evidence == _SCORE.missing
    assert C.contrast_findings(_SCORE, _contrast_rows({0: 0.1}).drop(columns=["score"])) == []


def test_the_studys_comparisons_read_their_axis_from_the_entries():
    assert C.CONTRASTS["organisation"].over == C.CONDITION == F.TRENDS["latent_size"].axis == "latent_dim"
    assert [b.column for b in C.CONTRASTS["organisation"].baselines] == [
        "probe_accuracy_untrained",
        "probe_accuracy_pca",
    ]


def _runs(prefix: str, images: int, values: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"run_id": [f"{prefix}{s}" for s in range(len(values))], "images_seen": images, "bpd_iwae": values}
    )


def test_equal_compute_comparisons_also_show_equal_images_where_the_kept_models_have_them():
    ref, fam = _runs("r", 100_000, [3.0, 3.1, 3.05]), _runs("f", 26_000, [3.4, 3.5, 3.45])
    quarter = _runs("r", 100_000, [3.6, 3.7, 3.65]).assign(fraction=0.25)  # the reference after 25,000 images
    text = M.equal_images(ref, fam, quarter, "bpd_iwae")
    assert "Images seen: reference 100,000, family 26,000 (3.8×)" in text, text
    assert "at equal images (reference at 0.25 of its budget, family at 1: about 25,000 images)" in text
    assert "reference minus family: 0.2, 95 % CI" in text and "not in it" in text
    # without models kept along training the data have no such point, and say so
    assert text.split(";")[0] in M.equal_images(ref, fam, None, "bpd_iwae")
    assert "the data have no equal-epoch comparison" in M.equal_images(ref, fam, None, "bpd_iwae")
    # the same images at the end: nothing to add
    assert M.equal_images(ref, _runs("f", 95_000, [3.4, 3.5, 3.45]), quarter, "bpd_iwae") == ""

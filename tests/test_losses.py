"""Known values for each likelihood and the KL; the warm-up schedule and the objective."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaelab.models.losses import (
    Bernoulli,
    DiscretizedLogistic,
    Gaussian,
    MixtureOfLogistics,
    bits_per_dim,
    kl_per_dim,
    kl_weight,
    log_normal,
    make_likelihood,
    objective,
)


def test_discretized_logistic_is_a_distribution_over_256_values():
    lik = DiscretizedLogistic()
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    for mu, log_s in [(0.0, -3.0), (-0.9, -5.0), (0.99, -1.0), (0.2, -7.0), (-1.0, 1.0)]:
        params = torch.tensor([mu, log_s]).view(1, 2, 1, 1).expand(256, 2, 1, 1)
        p = lik.log_prob(params, x).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
        assert p.argmax().item() == pytest.approx(round((mu + 1) / 2 * 255), abs=1)


def test_discretized_logistic_known_value():
    # mu = 0 (pixel 127.5), s = 0.1: P(x = 128) = sigmoid((1/255 + 1/255)/0.1) - sigmoid(0)
    lik = DiscretizedLogistic()
    params = torch.tensor([0.0, math.log(0.1)]).view(1, 2, 1, 1)
    got = lik.log_prob(params, torch.tensor([[[[128]]]], dtype=torch.uint8)).item()
    xs = 128 * 2 / 255 - 1
    want = math.log(
        torch.sigmoid(torch.tensor((xs + 1 / 255) / 0.1)) - torch.sigmoid(torch.tensor((xs - 1 / 255) / 0.1))
    )
    assert got == pytest.approx(want, rel=1e-5)


def test_discretized_logistic_tail_uses_density_times_bin_width():
    """Far in the tail the bin mass underflows (< 1e-5) and the density at the bin centre times the bin width
    (2/255 on [-1, 1]: the constant log 127.5) stands in. Compare with the exact mass, computed stably."""
    lik = DiscretizedLogistic()
    s, x = 0.01, 250
    c = x * 2 / 255 - 1  # 0.96, 96 scales from mu = 0
    got = lik.log_prob(
        torch.tensor([0.0, math.log(s)]).view(1, 2, 1, 1), torch.tensor([[[[x]]]], dtype=torch.uint8)
    ).item()
    a, b = (c - 1 / 255) / s, (c + 1 / 255) / s  # mass = sigmoid(b) - sigmoid(a) = e^-a - e^-b for large a, b
    exact = -a + math.log1p(-math.exp(a - b))
    assert exact == pytest.approx(-96.296, abs=1e-3)
    assert got == pytest.approx(exact, abs=0.05)  # the midpoint rule's error; a wrong constant is off by >= 0.4


def test_bernoulli_known_value():
    logits = torch.tensor([[[[0.3, -1.2]]]])
    x = torch.tensor([[[[255, 51]]]], dtype=torch.uint8)
    t = x.float() / 255
    p = torch.sigmoid(logits)
    want = (t * p.log() + (1 - t) * (1 - p).log()).sum()
    assert Bernoulli().log_prob(logits, x).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("sigma", [0.0, 0.2])
def test_gaussian_matches_torch_normal(sigma):
    lik = Gaussian(sigma)
    mean = torch.rand(3, 1, 4, 4)
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    scale = sigma if sigma else 1.0  # a learned sigma starts at 1
    want = Normal(mean, scale).log_prob(x.float() / 255).flatten(1).sum(1)
    assert torch.allclose(lik.log_prob(mean, x), want, atol=1e-4)
    assert any(p.requires_grad for p in lik.parameters()) == (sigma == 0)


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 7), torch.randn(5, 7)
    want = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    assert torch.allclose(kl_per_dim(mu, logvar), want, atol=1e-5)
    assert torch.all(kl_per_dim(torch.zeros(2, 3), torch.zeros(2, 3)) == 0)


def test_log_normal_matches_torch():
    z, mu, logvar = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    assert torch.allclose(log_normal(z), Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)
    assert torch.allclose(log_normal(z, mu, logvar), Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1), atol=1e-5)


def test_kl_warmup_is_linear_then_flat():
    assert kl_weight(2.0, 0, 10) == 0.0
    assert kl_weight(2.0, 5, 10) == pytest.approx(1.0)
    assert kl_weight(2.0, 50, 10) == 2.0
    assert kl_weight(2.0, 0, 0) == 2.0


def test_objective_weights_kl_by_beta():
    terms = {"recon": torch.tensor([10.0, 20.0]), "kl": torch.tensor([1.0, 3.0])}
    assert objective(terms, 1.0).item() == pytest.approx(17.0)
    assert objective(terms, 4.0).item() == pytest.approx(15.0 + 8.0)
    assert objective(terms, 0.0).item() == pytest.approx(15.0)


def test_bits_per_dim():
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "discretized_logistic", "dmol"])
def test_mean_and_sample_are_images(name):
    lik = make_likelihood(name)
    params = torch.randn(2, lik.channels(3), 5, 5)
    for img in (lik.mean(params), lik.sample(params)):
        assert img.shape == (2, 3, 5, 5) and img.min() >= 0 and img.max() <= 1


def test_cyclical_schedule_known_values():
    """Fu et al. 2019: 100 steps, 4 cycles of 25, rising over the first half of each."""
    from vaelab.models.losses import cyclical_weight

    got = [cyclical_weight(2.0, s / 100, 4, 0.5) for s in (0, 5, 12.5, 13, 24, 25, 30, 99)]
    assert got == pytest.approx([0.0, 0.8, 2.0, 2.0, 2.0, 0.0, 0.8, 2.0])


def _cfg(**kw):
    from vaelab.runs.config import TrainConfig

    return TrainConfig(**kw)


def test_free_bits_floors_each_dimensions_kl_and_is_the_elbo_at_zero():
    from vaelab.models.losses import OBJECTIVES

    kl_d = torch.tensor([[0.1, 2.0, 0.0], [0.3, 4.0, 0.0]], requires_grad=True)
    terms = {"recon": torch.tensor([10.0, 20.0]), "kl_per_dim": kl_d, "kl": kl_d.sum(1)}
    # batch means per dimension: 0.2, 3.0, 0.0 -> with lambda 0.5: 0.5 + 3.0 + 0.5
    loss = OBJECTIVES["free_bits"](terms, 1.0, _cfg(free_bits=0.5))
    assert loss.item() == pytest.approx(15.0 + 4.0)
    loss.backward()
    assert kl_d.grad[:, 0].abs().sum() == 0 and kl_d.grad[:, 2].abs().sum() == 0  # below the floor: no pull
    assert kl_d.grad[:, 1].tolist() == pytest.approx([0.5, 0.5])
    neutral = OBJECTIVES["free_bits"](terms, 2.0, _cfg(free_bits=0.0))
    assert neutral.item() == pytest.approx(OBJECTIVES["elbo"](terms, 2.0).item())


def test_capacity_objective_known_value_and_neutral_setting():
    from vaelab.models.losses import OBJECTIVES

    terms = {"recon": torch.tensor([10.0, 20.0]), "kl": torch.tensor([4.0, 8.0])}
    cfg = _cfg(objective="capacity", capacity_max=20.0, capacity_gamma=2.0)
    # halfway through training C = 10: mean of 10 + 2*|4-10| and 20 + 2*|8-10| = (22 + 24) / 2
    assert OBJECTIVES["capacity"](terms, 1.0, cfg, progress=0.5).item() == pytest.approx(23.0)
    # C = 0 at the start: gamma * KL, the beta-ELBO with beta = gamma
    assert OBJECTIVES["capacity"](terms, 1.0, cfg, 0.0).item() == pytest.approx(OBJECTIVES["elbo"](terms, 2.0).item())


@pytest.mark.parametrize(
    "fields,msg",
    [
        (
            {"objective": "tcvae"},
            "unknown objective 'tcvae' (known: elbo, free_bits, capacity, beta_tcvae, "
            "factor_vae, dip_vae_i, dip_vae_ii, iwae)",
        ),
        ({"kl_schedule": "sigmoid"}, "unknown kl_schedule"),
        ({"objective": "free_bits", "prior": "mog"}, "needs the factorised standard prior"),
        ({"objective": "free_bits", "posterior": "iaf"}, "and the gaussian posterior"),
        ({"posterior": "iaf", "prior": "vamp"}, "use it with --posterior gaussian"),
        ({"posterior": "planar"}, "unknown posterior .planar."),
        ({"objective": "beta_tcvae", "prior": "vamp"}, "needs the factorised standard prior"),
        ({"kl_cycle_ratio": 0.0}, "kl_cycle_ratio"),
    ],
)
def test_objective_fields_are_validated(fields, msg):
    from vaelab import VaelabError
    from vaelab.runs.config import from_dict

    with pytest.raises(VaelabError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        from_dict(fields)


def _gaussian_terms(b=512, d=3, seed=0, correlated=False):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g)
    if correlated:  # every dimension a copy of the first: strongly dependent codes
        mu = 2 * mu[:, :1].expand(b, d).clone()
    logvar = torch.full((b, d), -1.0)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(b, d, generator=g)
    return {"z": z, "mu": mu, "logvar": logvar, "recon": torch.full((b,), 100.0)}


def test_tc_decomposition_sums_to_the_kl_estimate_and_sees_dependence():
    from vaelab.models.losses import tc_decomposition

    t = _gaussian_terms()
    parts = tc_decomposition(t, n_data=60000)
    total = parts["mi"] + parts["tc"] + parts["dwkl"]
    assert torch.allclose(total, log_normal(t["z"], t["mu"], t["logvar"]) - log_normal(t["z"]), atol=1e-4)
    indep = parts["tc"].mean().item()
    dep = tc_decomposition(_gaussian_terms(correlated=True), n_data=60000)["tc"].mean().item()
    assert abs(indep) < 0.1 and dep > 1.0  # factorised codes: TC ~ 0; copies of one code: large TC


def test_beta_tcvae_at_its_neutral_weights_is_the_monte_carlo_elbo():
    from vaelab.models.losses import OBJECTIVES

    t = _gaussian_terms()
    cfg = _cfg(objective="beta_tcvae")
    loss = OBJECTIVES["beta_tcvae"](t, 1.0, cfg, n_data=60000)
    mc_elbo = (t["recon"] + log_normal(t["z"], t["mu"], t["logvar"]) - log_normal(t["z"])).mean()
    assert loss.item() == pytest.approx(mc_elbo.item(), rel=1e-5)
    assert OBJECTIVES["beta_tcvae"](t, 6.0, cfg, n_data=60000).item() != pytest.approx(loss.item())


def _dmol_params(k: int, c: int, n_pix: int = 1, seed: int = 0, spread: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return spread * torch.randn(n_pix, MixtureOfLogistics(k).channels(c), 1, 1, generator=g)


def _direct_bin_mass(v: int, m: float, s: float) -> float:
    """The bin's mass straight from the logistic CDF, in float64 (edge bins take the tails)."""
    cdf = lambda t: 1.0 / (1.0 + math.exp(-(t - m) / s))  # noqa: E731
    centre = v * 2.0 / 255.0 - 1.0
    hi = 1.0 if v == 255 else cdf(centre + 1.0 / 255.0)
    lo = 0.0 if v == 0 else cdf(centre - 1.0 / 255.0)
    return hi - lo


@pytest.mark.parametrize("c", [1, 3])
def test_dmol_matches_a_direct_computation_of_the_bin_masses(c):
    """Mixture weights shared by a pixel's channels, the coupling shifting later channels' means by the earlier
    values (PixelCNN++ eq. 3), and each bin's mass from the logistic CDF, all recomputed by hand in float64."""
    k = 3
    lik = MixtureOfLogistics(k)
    params = _dmol_params(k, c, seed=1, spread=0.7)
    for x in ([[0]], [[37]], [[255]], [[128]]) if c == 1 else ([[0, 200, 255]], [[12, 130, 77]], [[255, 0, 64]]):
        xt = torch.tensor(x, dtype=torch.uint8).view(1, c, 1, 1)
        p = params[0, :, 0, 0].double()
        logits, mu, log_s = p[:k], p[k : k + k * c].view(k, c), p[k + k * c : k + 2 * k * c].view(k, c).clamp(min=-7)
        coef = torch.tanh(p[k + 2 * k * c :]).view(k, -1)
        pi = torch.softmax(logits, 0)
        vals = [v * 2.0 / 255.0 - 1.0 for v in x[0]]
        total = 0.0
        for j in range(k):
            prob = float(pi[j])
            for ch in range(c):
                m = float(mu[j, ch]) + sum(float(coef[j, ch * (ch - 1) // 2 + i]) * vals[i] for i in range(ch))
                prob *= _direct_bin_mass(x[0][ch], m, math.exp(float(log_s[j, ch])))
            total += prob
        got = lik.log_prob(params, xt).item()
        assert got == pytest.approx(math.log(total), rel=1e-4, abs=1e-4)


def test_dmol_sums_to_one_over_every_value_of_a_grey_and_a_colour_pixel():
    grey = MixtureOfLogistics(4)
    params = _dmol_params(4, 1, seed=2)
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    assert grey.log_prob(params.expand(256, -1, -1, -1), x).exp().sum().item() == pytest.approx(1.0, abs=1e-4)
    colour = MixtureOfLogistics(2)
    params = _dmol_params(2, 3, seed=3, spread=0.5)
    gb = torch.cartesian_prod(torch.arange(256), torch.arange(256))  # all 65,536 (g, b) pairs
    total = 0.0
    for r in range(256):  # all 16.8 million colours, one red level at a time
        x = torch.cat([torch.full((len(gb), 1), r), gb], 1).to(torch.uint8).view(-1, 3, 1, 1)
        total += colour.log_prob(params.expand(len(x), -1, -1, -1), x).double().exp().sum().item()
    assert total == pytest.approx(1.0, abs=1e-3)


def test_dmol_samples_follow_the_mixture_and_the_mean_is_its_mean():
    """A grey pixel: the empirical histogram of samples matches the masses, and `mean` equals sum_x x p(x)."""
    lik = MixtureOfLogistics(3)
    params = _dmol_params(3, 1, seed=4, spread=0.6)
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    probs = lik.log_prob(params.expand(256, -1, -1, -1), x).exp()
    torch.manual_seed(0)
    draws = lik.sample(params.expand(20000, -1, -1, -1)).flatten()
    levels = torch.round(draws * 255).long()
    hist = torch.bincount(levels, minlength=256).float() / len(levels)
    assert (hist.cumsum(0) - probs.cumsum(0)).abs().max().item() < 0.02  # Kolmogorov-Smirnov distance
    exact_mean = (probs * torch.arange(256) / 255.0).sum().item()
    assert lik.mean(params).item() == pytest.approx(exact_mean, abs=0.02)  # edge clipping aside


def test_an_objective_is_added_by_registration_alone(tiny_root, tmp_path, monkeypatch):
    """One entry in OBJECTIVES, with its facts: the config accepts it, the trainer trains with it (and the facts say
    whether the stacked trainer and the hierarchical model may), and its main weight is what findings sweep."""
    from conftest import tiny_config
    from vaelab import data as vdata
    from vaelab.models.losses import OBJECTIVES, Objective, beta_elbo
    from vaelab.study.model_findings import main_weight
    from vaelab.training import multirun
    from vaelab.training.loop import train

    def elbo_l1(terms, beta, cfg=None, progress=0.0):
        return beta_elbo(terms, beta) + 1e-3 * terms["mu"].abs().sum(1).mean()

    monkeypatch.setitem(OBJECTIVES, "elbo_l1", Objective(elbo_l1, main_weight="beta"))
    cfg = tiny_config(epochs=1, objective="elbo_l1")
    last = train(cfg, tmp_path / "r", dataset=vdata.load("fashion-mnist", tiny_root))
    assert math.isfinite(last["train_loss"])
    assert multirun.unsupported(cfg) == "objective elbo_l1"  # not stackable unless its entry says so
    import pandas as pd

    assert main_weight(pd.DataFrame({"objective": ["elbo_l1"], "beta": [4.0]})).tolist() == [4.0]
    with pytest.raises(Exception, match="hierarchical model supports"):
        tiny_config(model="hierarchical", objective="elbo_l1")

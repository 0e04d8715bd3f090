"""Shapes and named terms of the VAE for every architecture, likelihood and dataset shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.evaluation.generate import Sampler
from vaelab.models import PRIORS, VAE
from vaelab.models.losses import log_normal
from vaelab.runs.config import TrainConfig


@pytest.mark.parametrize("arch", ["conv", "mlp", "mlp_tanh", "mlp_gated", "resnet"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized_logistic"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_forward_terms_and_shapes(arch, likelihood, shape):
    model = VAE(shape, 3, arch, likelihood)
    x = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    t = model(x)
    for k in ("recon", "kl", "elbo"):
        assert t[k].shape == (5,)
    assert t["kl_per_dim"].shape == (5, 3) and t["mu"].shape == (5, 3) and t["z"].shape == (5, 3)
    assert torch.allclose(t["elbo"], -(t["recon"] + t["kl"]))
    assert torch.allclose(t["kl"], t["kl_per_dim"].sum(1))
    assert torch.all(t["kl"] >= 0)
    assert model.x_hat(t["params"]).shape == (5, *shape)
    assert Sampler(model).images(4).shape == (4, *shape)
    assert model.reconstruct(x).shape == (5, *shape)


def test_latent_dim_one_and_reference_layers():
    model = VAE((1, 28, 28), 1, "conv", "bernoulli")
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (1, 32, (3, 3), (2, 2)),
        (32, 64, (3, 3), (2, 2)),
    ]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(d.in_channels, d.out_channels, d.kernel_size) for d in deconvs] == [(64, 32, (4, 4)), (32, 1, (4, 4))]
    assert model(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))["z"].shape == (2, 1)


def test_conditional_vae_needs_labels_and_uses_them():
    cfg = TrainConfig(latent_dim=2, conditional=True)
    model = VAE.from_config(cfg, (1, 28, 28), 10)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(ValueError, match="labels"):
        model(x)
    z = torch.zeros(1, 2)
    a, b = model.decode(z, torch.tensor([0])), model.decode(z, torch.tensor([7]))
    assert not torch.allclose(a, b)


# ---------------------------------------------------------------- priors p(z)


def _grid_integral(prior, lim=8.0, n=401) -> float:
    """Integrate exp(log_prob) over a 2-D grid (trapezoid rule)."""
    t = torch.linspace(-lim, lim, n)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        dens = prior.log_prob(zz).exp().reshape(n, n)
    return float(torch.trapezoid(torch.trapezoid(dens, t), t))


@pytest.mark.parametrize("name", list(PRIORS))
def test_each_prior_is_a_density_whose_samples_match_it(name):
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 2, "conv", "bernoulli", prior=name, prior_components=3)
    with torch.no_grad():
        if name == "mog":  # spread the components so the test is not about one Gaussian
            model.prior.means.mul_(1.5)
            model.prior.logits.copy_(torch.tensor([0.0, 1.0, -1.0]))
    assert _grid_integral(model.prior) == pytest.approx(1.0, abs=2e-3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z = model.prior.sample(40000, g)
        # the density's own mean and variance, from the same grid: the samples must match them
        t = torch.linspace(-8, 8, 401)
        zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
        w = model.prior.log_prob(zz).exp()
        w = w / w.sum()
        mean = (w[:, None] * zz).sum(0)
        var = (w[:, None] * (zz - mean) ** 2).sum(0)
    assert torch.allclose(z.mean(0), mean, atol=0.03) and torch.allclose(z.var(0), var, rtol=0.05)


def test_vamp_prior_with_one_pseudo_input_is_that_inputs_posterior():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 3, "conv", "bernoulli", prior="vamp", prior_components=1)
    z = torch.randn(5, 3)
    with torch.no_grad():
        mu, logvar = model.encode_float(torch.sigmoid(model.prior.pseudo))
        assert torch.allclose(model.prior.log_prob(z), log_normal(z, mu[0], logvar[0]), atol=1e-5)


def test_the_vamp_prior_trains_its_pseudo_inputs():
    model = VAE((1, 28, 28), 2, "conv", "bernoulli", prior="vamp", prior_components=2)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    t = model(x)
    (t["recon"] + t["kl"]).mean().backward()
    assert model.prior.pseudo.grad is not None and model.prior.pseudo.grad.abs().sum() > 0


def test_iwae_with_k_1_is_the_elbo_on_the_same_noise_and_mc_kl_matches_analytic():
    """One method gives the importance log-weights: with K = 1 and the same noise it is the single-sample ELBO;
    and under N(0, I) the Monte-Carlo KL, averaged, matches the analytic one."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 4, "conv", "discretized_logistic").eval()
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.manual_seed(3)
        log_w = model.log_weights(x, None, 1)[:, 0]
        torch.manual_seed(3)
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # the draw log_weights made
        elbo = model.likelihood.log_prob(model.decode(z).float(), x) + log_normal(z) - log_normal(z, mu, logvar)
        assert torch.allclose(log_w, elbo, atol=1e-3)
        zs = mu + torch.exp(0.5 * logvar) * torch.randn(20000, *mu.shape)
        mc = (log_normal(zs, mu, logvar) - log_normal(zs)).mean(0)
        assert torch.allclose(mc, model(x)["kl"], rtol=0.05, atol=0.05)


def test_a_learned_prior_gives_a_monte_carlo_kl_and_no_per_dimension_kl():
    model = VAE((1, 28, 28), 2, "conv", "bernoulli", prior="mog", prior_components=4)
    t = model(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8))
    assert "kl_per_dim" not in t
    want = log_normal(t["z"], t["mu"], t["logvar"]) - model.prior.log_prob(t["z"])
    assert torch.allclose(t["kl"], want)
    with torch.no_grad():
        assert Sampler(model).images(5).shape == (5, 1, 28, 28)


def test_the_standard_prior_adds_nothing_to_a_checkpoint():
    torch.manual_seed(0)
    a = VAE((1, 28, 28), 4)
    assert not [k for k in a.state_dict() if k.startswith("prior.")]  # nothing new in a checkpoint


# ---------------------------------------------------------------- the IAF posterior


def test_iaf_log_det_is_the_log_det_of_its_jacobian_and_each_step_is_autoregressive():
    from vaelab.models import IAF

    torch.manual_seed(0)
    flow = IAF(4, 6, steps=3, hidden=16)
    for made in flow.steps:  # random weights (not the near-identity start) so the test has something to check
        torch.nn.init.normal_(made.out.weight, std=0.5)
    z, h = torch.randn(4), torch.randn(6)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v, h)[0], z)
    assert torch.allclose(flow(z, h)[1], torch.linalg.slogdet(jac)[1], atol=1e-5)
    one = IAF(4, 6, steps=1, hidden=16)
    torch.nn.init.normal_(one.steps[0].out.weight, std=0.5)
    j1 = torch.autograd.functional.jacobian(lambda v: one(v, h)[0], z)
    assert torch.allclose(j1, torch.tril(j1)) and not torch.allclose(j1, torch.diag(torch.diagonal(j1)))


def test_iaf_posterior_terms_log_weights_and_codes():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 3, "conv", "bernoulli", posterior="iaf", flow_steps=2, flow_hidden=16)
    for made in model.posterior.flow.steps:
        torch.nn.init.normal_(made.out.weight, std=0.3)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(1)
    t = model(x)
    assert "kl_per_dim" not in t and torch.allclose(t["elbo"], -(t["recon"] + t["kl"]))
    torch.manual_seed(1)
    z, log_q, mu, logvar = model.posterior_sample(x, None)
    assert torch.allclose(z, t["z"]) and torch.allclose(t["kl"], log_q - model.prior.log_prob(z))
    with torch.no_grad():  # K = 1 importance weight on the same noise is the single-sample ELBO
        torch.manual_seed(2)
        lw = model.log_weights(x, None, 1)[:, 0]
        torch.manual_seed(2)
        z1, lq1, _, _ = model.posterior_sample(x, None, 1)
        want = model.likelihood.log_prob(model.decode(z1[:, 0]).float(), x) + log_normal(z1[:, 0]) - lq1[:, 0]
        assert torch.allclose(lw, want, atol=1e-4)
        code, _ = model.encode(x)  # the mean code: the Gaussian's mean through the flow
        post = model.posterior
        assert torch.allclose(code, post.flow(mu, post.to_context(model.features(x)))[0])


def test_a_gaussian_posterior_model_has_no_flow_parameters():
    assert not [
        k for k in VAE((1, 28, 28), 4).state_dict() if k.startswith(("posterior.flow.", "posterior.to_context."))
    ]


@pytest.mark.parametrize("posterior", ["gaussian", "iaf"])
def test_weights_saved_before_the_posterior_was_a_part_still_load(posterior):
    """Checkpoints from before the refactor kept to_mu/to_logvar/to_context/flow on the VAE itself."""
    torch.manual_seed(0)
    old = VAE((1, 28, 28), 3, "conv", "bernoulli", posterior=posterior, flow_steps=1, flow_hidden=8)
    legacy = {k.removeprefix("posterior."): v for k, v in old.state_dict().items()}
    assert "to_mu.weight" in legacy and not any(k.startswith("posterior.") for k in legacy)
    torch.manual_seed(1)
    new = VAE((1, 28, 28), 3, "conv", "bernoulli", posterior=posterior, flow_steps=1, flow_hidden=8)
    new.load_state_dict(legacy)
    x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
    assert torch.equal(new.encode(x)[0], old.encode(x)[0])
    with pytest.raises(RuntimeError):  # a key that is neither old nor new is still refused
        new.load_state_dict({**legacy, "bogus.weight": torch.zeros(1)})


def test_a_posterior_added_as_one_registry_entry_works_end_to_end(monkeypatch):
    """The README's worked example, verbatim in spirit: one class, one entry, and config, model, ELBO and IWAE use it."""
    from torch import nn

    from vaelab.models import POSTERIORS, GaussianPosterior

    class AffinePosterior(GaussianPosterior):
        analytic_kl = False

        def __init__(self, features, latent_dim, steps=2, hidden=128):
            super().__init__(features, latent_dim)
            self.s, self.t = nn.Parameter(torch.zeros(latent_dim)), nn.Parameter(torch.zeros(latent_dim))

        def rsample(self, h, k=None):
            z, log_q, mu, logvar = super().rsample(h, k)
            return torch.exp(self.s) * z + self.t, log_q - self.s.sum(), mu, logvar

        def mean(self, h):
            return torch.exp(self.s) * self.to_mu(h) + self.t

    monkeypatch.setitem(POSTERIORS, "affine", AffinePosterior)
    cfg = TrainConfig(latent_dim=3, posterior="affine", likelihood="bernoulli")
    model = VAE.from_config(cfg, (1, 28, 28))
    with torch.no_grad():
        model.posterior.s.copy_(torch.tensor([0.5, -0.3, 0.1]))
        model.posterior.t.copy_(torch.tensor([1.0, 0.0, -2.0]))
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    t = model(x)
    assert "kl_per_dim" not in t
    # z = exp(s) (mu + sigma eps) + t is N(exp(s) mu + t, exp(2s) sigma^2): the density the change of variables gives
    s = model.posterior.s
    want = log_normal(t["z"], torch.exp(s) * t["mu"] + model.posterior.t, t["logvar"] + 2 * s)
    assert torch.allclose(t["kl"], want - model.prior.log_prob(t["z"]), atol=1e-5)
    loss = -t["elbo"].mean()
    loss.backward()
    assert model.posterior.s.grad is not None and model.posterior.s.grad.abs().sum() > 0
    with torch.no_grad():
        assert model.log_weights(x, None, 5).shape == (4, 5)


def test_the_readme_laplace_prior_is_a_density_with_matching_samples(monkeypatch):
    """The README's worked prior: log_prob integrates to 1 in 1-D and samples have Laplace(0, 1) moments."""
    import math

    from vaelab.models import Prior

    class Laplace(Prior):
        def log_prob(self, z):
            return (-z.abs() - math.log(2)).sum(-1)

        def sample(self, n, generator=None):
            e = torch.empty(n, self.latent_dim).exponential_(generator=generator)
            sign = torch.randint(0, 2, (n, self.latent_dim), generator=generator) * 2 - 1
            return e * sign

    monkeypatch.setitem(PRIORS, "laplace", Laplace)
    model = VAE((1, 28, 28), 1, "conv", "bernoulli", prior="laplace")
    grid = torch.linspace(-30, 30, 60001)[:, None]
    assert torch.trapezoid(model.prior.log_prob(grid).exp(), grid[:, 0]).item() == pytest.approx(1.0, abs=1e-3)
    z = model.prior.sample(20000, torch.Generator().manual_seed(0))
    assert abs(z.mean().item()) < 0.05 and z.var().item() == pytest.approx(2.0, rel=0.05)


_PARTS = [("gaussian", "standard"), ("iaf", "standard"), ("gaussian", "mog"), ("gaussian", "vamp")]


@pytest.mark.parametrize("arch", ["conv", "mlp", "mlp_gated", "resnet", "hierarchical"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized_logistic", "dmol"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_every_network_likelihood_and_part_gives_finite_terms(arch, likelihood, shape):
    """Every network x likelihood x posterior/prior on tiny images: finite named terms, finite gradients, and the
    K = 3 importance weights the IWAE bound needs (the hierarchical model has its own per-group parts)."""
    from vaelab.models import build

    parts = _PARTS if arch != "hierarchical" else [("gaussian", "standard")]
    sized = dict(width=4, depth=1) if arch in ("resnet", "hierarchical") else {}
    for posterior, prior in parts:
        cfg = TrainConfig(
            **({"model": arch} if arch == "hierarchical" else {"net": arch}),
            likelihood=likelihood,
            latent_dim=2,
            posterior=posterior,
            prior=prior,
            flow_steps=1,
            flow_hidden=8,
            prior_components=2,
            likelihood_components=2,
            latent_groups=1,
            **sized,
        )
        torch.manual_seed(0)
        model = build(cfg, shape)
        x = torch.randint(0, 256, (3, *shape), dtype=torch.uint8)
        t = model(x)
        assert all(torch.isfinite(t[k]).all() for k in ("recon", "kl", "elbo")), (posterior, prior)
        t["elbo"].mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        with torch.no_grad():
            assert torch.isfinite(model.log_weights(x, None, 3)).all()
            assert Sampler(model).images(2).shape == (2, *shape)


@pytest.mark.parametrize("cin,cout,hw", [(32, 1, 14), (32, 2, 16), (32, 6, 8), (64, 32, 7), (8, 2, 5)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upconv_computes_the_transposed_convolution(cin, cout, hw, channels_last):
    """In inference the sub-pixel path (few output channels) gives ConvTranspose2d's outputs; with gradients it is
    ConvTranspose2d itself (same parameters, same state-dict keys)."""
    from vaelab.models.nets import UpConv

    torch.manual_seed(0)
    up, ref = UpConv(cin, cout), nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    assert up.subpixel == (4 * cout <= cin)
    ref.load_state_dict(up.state_dict())
    x = torch.randn(3, cin, hw, hw)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a, b = up(x), ref(x)
    assert a.shape == b.shape == (3, cout, 2 * hw, 2 * hw)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    w, bias = up.subpixel_weight()  # the sub-pixel weights hold each kernel tap exactly once per phase
    assert torch.equal(w.flatten().abs().sort().values[-up.weight.numel() :], up.weight.flatten().abs().sort().values)
    assert torch.equal(bias[::4], up.bias)
    with torch.no_grad():
        up.subpixel = False  # a wrong sub-pixel form would show here as a mismatch with the plain path
        torch.testing.assert_close(up(x), a, rtol=1e-5, atol=1e-5)

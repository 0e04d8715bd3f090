"""The parts of Tomczak & Welling's code as entries: AdamNormGrad, the hard-tanh posterior, He-normal weights."""

import json
import math

import pytest
import torch

from conftest import check_two_stochastic_layers
from vaelab.core.errors import VaelabError
from vaelab.models import VAE, build
from vaelab.models.losses import log_normal
from vaelab.runs.config import TrainConfig
from vaelab.training.optim import make_optimizer

PAPER = dict(dataset="binarized-mnist", likelihood="bernoulli", net="mlp_gated", latent_dim=4)
HVAE = dict(dataset="binarized-mnist", likelihood="bernoulli", model="hvae")  # its own networks
SHAPE = (1, 28, 28)


def _adam_step(p0: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """One Adam step from zero moments (Kingma & Ba 2015, algorithm 1): p - lr * g / (|g| + eps) elementwise."""
    return p0 - lr * grad / (grad.abs() + 1e-8)


def test_adam_normgrad_steps_on_the_gradient_scaled_to_unit_norm_per_tensor():
    cfg = TrainConfig(**PAPER, optimizer="adam_normgrad", lr=0.1)
    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(cfg, model)
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    gw = torch.tensor([[3.0, 0.0, -4.0], [0.0, 0.0, 0.0]])
    gb = torch.tensor([0.0, -2.0])
    model.weight.grad, model.bias.grad = gw.clone(), gb.clone()
    opt.step()
    # the gradients the step saw: each tensor divided by its norm (5 and 2), and the moments hold those
    assert torch.allclose(model.weight.grad, gw / (5 + 1e-7))
    assert torch.allclose(opt.state[model.weight]["exp_avg"], 0.1 * gw / 5, atol=1e-7)
    assert torch.allclose(opt.state[model.bias]["exp_avg_sq"], 0.001 * (gb / 2) ** 2, atol=1e-9)
    assert torch.allclose(model.weight, _adam_step(w0, gw / 5, 0.1), atol=1e-6)
    assert torch.allclose(model.bias, _adam_step(b0, gb / 2, 0.1), atol=1e-6)


def test_adam_normgrad_second_step_ignores_the_gradients_scale():
    """Two steps whose gradients differ only by a factor of 1,000 leave the same weights as two equal ones: the
    normalisation removes the scale Adam's moments would otherwise average over."""
    out = []
    for scale in (1.0, 1000.0):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = make_optimizer(TrainConfig(**PAPER, optimizer="adam_normgrad", lr=0.01), model)
        for s in (1.0, scale):
            model.weight.grad = s * torch.arange(6.0).view(2, 3)
            model.bias.grad = s * torch.ones(2)
            opt.step()
        out.append(model.weight.detach().clone())
    assert torch.allclose(out[0], out[1], atol=1e-6)
    plain = []
    for scale in (1.0, 1000.0):  # plain Adam does feel it
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = make_optimizer(TrainConfig(**PAPER, optimizer="adam", lr=0.01), model)
        for s in (1.0, scale):
            model.weight.grad, model.bias.grad = s * torch.arange(6.0).view(2, 3), s * torch.ones(2)
            opt.step()
        plain.append(model.weight.detach().clone())
    assert not torch.allclose(plain[0], plain[1], atol=1e-6)


def test_hardtanh_posterior_bounds_the_log_variance_and_estimates_the_kl_by_its_sample():
    torch.manual_seed(0)
    model = VAE.from_config(TrainConfig(**PAPER, posterior="gaussian_hardtanh"), (1, 28, 28))
    with torch.no_grad():
        model.posterior.to_logvar.bias.copy_(torch.tensor([-50.0, 50.0, 0.0, -3.0]))
        model.posterior.to_logvar.weight.zero_()
    x = torch.randint(0, 2, (5, 1, 28, 28), dtype=torch.uint8) * 255
    t = model(x)
    assert torch.equal(t["logvar"][0], torch.tensor([-6.0, 2.0, 0.0, -3.0]))
    assert "kl_per_dim" not in t  # one sample, as the paper's code: KL = log q(z|x) - log p(z) at that z
    want = log_normal(t["z"], t["mu"], t["logvar"]) - log_normal(t["z"])
    assert torch.allclose(t["kl"], want, atol=1e-5)
    assert not model.analytic_kl


def test_he_init_draws_every_linear_weight_with_variance_two_over_fan_in_and_is_seeded():
    torch.manual_seed(1)
    model = build(TrainConfig(**{**PAPER, "latent_dim": 40}, init="he"), (1, 28, 28))
    for name, p in model.named_parameters():
        if p.ndim == 2:
            assert abs(p.std().item() * math.sqrt(p.shape[1] / 2) - 1) < 0.05, name
    torch.manual_seed(1)
    again = build(TrainConfig(**{**PAPER, "latent_dim": 40}, init="he"), (1, 28, 28))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    torch.manual_seed(1)
    default = build(TrainConfig(**{**PAPER, "latent_dim": 40}), (1, 28, 28))
    # the gated layers are He-normal already; the heads start as torch makes them: std 1/sqrt(3 fan_in)
    w = default.posterior.to_mu.weight
    assert abs(w.std().item() * math.sqrt(3 * w.shape[1]) - 1) < 0.05


def test_unknown_parts_and_init_on_a_model_with_its_own_layers_are_refused():
    with pytest.raises(VaelabError, match="unknown optimizer 'adam_norm'"):
        TrainConfig(**PAPER, optimizer="adam_norm")
    with pytest.raises(VaelabError, match="unknown init 'xavier'"):
        TrainConfig(**PAPER, init="xavier")
    with pytest.raises(VaelabError, match="initialises its own layers"):
        TrainConfig(dataset="binarized-mnist", model="hierarchical", init="he")


# ---------------------------------------------------------------- their two-level HVAE


def _hvae(prior: str = "standard", latent_dim: int = 3):
    torch.manual_seed(0)
    cfg = TrainConfig(**HVAE, latent_dim=latent_dim, prior=prior, prior_components=7)
    return build(cfg, (1, 6, 6))


def test_hvae_terms_log_weights_and_bound_agree():
    t = check_two_stochastic_layers(_hvae())
    assert t["logvar"].min() >= -6 and t["logvar"].max() <= 2


def test_hvae_log_ratio_is_the_four_densities_of_its_draw():
    """log p(z2) + log p(z1|z2) - log q(z1|x, z2) - log q(z2|x), written out from the networks at the same noise."""
    model = _hvae()
    x = (torch.rand(4, 1, 6, 6) < 0.4).to(torch.uint8) * 255
    torch.manual_seed(3)
    _, log_ratio, z2, _, m2, lv2 = model._draws(x, 1)
    torch.manual_seed(3)
    eps2, eps1 = torch.randn(4, 1, 3), torch.randn(4, 1, 3)
    xf = x.flatten(1).float() / 255
    z2_want = m2[:, None] + torch.exp(0.5 * lv2[:, None]) * eps2
    assert torch.allclose(z2, z2_want, atol=1e-6)
    m1, lv1 = model.q1.gaussian(
        model.q1_net.joint(torch.cat([model.q1_net.a(xf)[:, None], model.q1_net.b(z2_want)], -1))
    )
    z1 = m1 + torch.exp(0.5 * lv1) * eps1
    pm1, plv1 = model.p1.gaussian(model.p1_net(z2_want))
    want = log_normal(z2_want) + log_normal(z1, pm1, plv1) - log_normal(z1, m1, lv1)
    want = want - log_normal(z2_want, m2[:, None], lv2[:, None])
    assert torch.allclose(log_ratio, want, atol=1e-4)


def test_hvae_vampprior_is_the_mixture_of_q_z2_over_its_pseudo_inputs():
    model = _hvae("vamp")
    z = torch.randn(5, 3)
    mu, logvar = model.q2.gaussian(model.q2_net(torch.sigmoid(model.prior.pseudo).flatten(1)))
    want = torch.logsumexp(torch.stack([log_normal(z, m, lv) for m, lv in zip(mu, logvar)], -1), -1) - math.log(7)
    assert torch.allclose(model.prior.log_prob(z), want, atol=1e-5)
    x = (torch.rand(3, 1, 6, 6) < 0.4).to(torch.uint8) * 255
    (-model(x)["elbo"].mean()).backward()
    assert model.prior.pseudo.grad is not None and model.prior.pseudo.grad.abs().sum() > 0


def test_hardtanh_vampprior_clips_its_pseudo_inputs_and_mixes_the_posteriors_of_them():
    """Their code's pseudo-inputs: parameters clipped to [0, 1] by a hard tanh, started at N(0.05, 0.01^2), the same
    start in every run; p(z) the mixture of q(z|u_k); every pixel has a gradient at the start, none once clipped."""
    model = build(
        TrainConfig(**PAPER, posterior="gaussian_hardtanh", prior="vamp_hardtanh", prior_components=50), SHAPE
    )
    u = model.prior.pseudo.detach()
    assert u.shape == (50, 1, 28, 28) and abs(u.mean().item() - 0.05) < 1e-3 and abs(u.std().item() - 0.01) < 1e-3
    torch.manual_seed(7)  # another run's seed: other weights, the same pseudo-inputs
    again = build(
        TrainConfig(**PAPER, posterior="gaussian_hardtanh", prior="vamp_hardtanh", prior_components=50), SHAPE
    )
    assert torch.equal(again.prior.pseudo, model.prior.pseudo)
    z = torch.randn(6, 4)
    mu, logvar = model.encode_float(u)
    want = torch.logsumexp(torch.stack([log_normal(z, m, lv) for m, lv in zip(mu, logvar)], -1), -1) - math.log(50)
    assert torch.allclose(model.prior.log_prob(z), want, atol=1e-5)
    model.prior.log_prob(z).sum().backward()
    assert (model.prior.pseudo.grad != 0).all()
    with torch.no_grad():
        model.prior.pseudo[0, 0, 0, :3] = torch.tensor([-0.5, 0.5, 1.5])
    assert model.prior.pseudo_inputs()[0, 0, 0, :3].tolist() == [0.0, 0.5, 1.0]
    model.prior.pseudo.grad = None
    model.prior.log_prob(z).sum().backward()
    g = model.prior.pseudo.grad[0, 0, 0, :3]
    assert g[0] == 0 and g[1] != 0 and g[2] == 0


def test_priors_built_from_the_encoder_share_their_rules():
    for prior in ("vamp", "vamp_hardtanh"):
        with pytest.raises(VaelabError, match=f"the {prior} prior mixes Gaussian posteriors"):
            TrainConfig(**PAPER, posterior="iaf", prior=prior)
        with pytest.raises(VaelabError, match=f"the {prior} prior needs an unconditional model"):
            TrainConfig(**PAPER, prior=prior, conditional=True)
        assert TrainConfig(**HVAE, prior=prior).prior == prior


def test_hvae_refuses_parts_it_does_not_have():
    with pytest.raises(VaelabError, match="hvae model has its own Gaussian layers"):
        TrainConfig(**HVAE, prior="mog")
    with pytest.raises(VaelabError, match="hvae model trains with the elbo or iwae"):
        TrainConfig(**HVAE, objective="beta_tcvae")


def test_hvae_trains_and_is_evaluated_from_the_cli(tmp_path):
    from conftest import write_fashion
    from vaelab.app.cli import main

    write_fashion(tmp_path / "data" / "mnist", n_train=120, n_test=20, seed=3)
    out = tmp_path / "r"
    argv = ["train", "--dataset", "binarized-mnist", "--model", "hvae", "--prior", "vamp", "--prior-components", "5"]
    argv += ["--likelihood", "bernoulli", "--latent-dim", "4", "--epochs", "2", "--val-size", "20"]
    argv += ["--iwae-samples", "5", "--optimizer", "adam_normgrad", "--out", str(out)]
    assert main([*argv, "--data-dir", str(tmp_path / "data")]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["iwae_nll"] <= ev["neg_elbo"] + 1.0 and ev["latent_dim"] == 4 and ev["kl_estimator"] == "monte carlo"


def test_the_hvae_row_is_their_recipe():
    from vaelab.study.reproduce import ROWS

    cfg = ROWS["tomczak2018-hvae-vampprior"].config
    assert (cfg.model, cfg.prior, cfg.prior_components, cfg.optimizer) == (
        "hvae",
        "vamp_hardtanh",
        500,
        "adam_normgrad",
    )
    assert ROWS["tomczak2018-vampprior"].config.prior == "vamp_hardtanh"
    assert (cfg.batch_size, cfg.lr, cfg.warmup_epochs, cfg.patience, cfg.val_size) == (100, 5e-4, 100, 50, 10_000)
    vae = ROWS["tomczak2018-vae"].config
    assert (vae.optimizer, vae.posterior, vae.init, vae.net) == (
        "adam_normgrad",
        "gaussian_hardtanh",
        "he",
        "mlp_gated",
    )


def test_runs_with_adam_normgrad_train_one_by_one_not_stacked():
    from vaelab.training.multirun import unsupported

    base = dict(dataset="fashion-mnist", likelihood="bernoulli", epochs=1)
    assert unsupported(TrainConfig(**base)) is None
    assert unsupported(TrainConfig(**base, optimizer="adam_normgrad")) == "optimizer adam_normgrad"

"""The hierarchical VAE and the residual networks: the bounds, the KL per group, generation through the shared
interface, and what makes deep stacks train (identity residual branches at initialisation)."""

from __future__ import annotations

import pytest
import torch

from vaelab.evaluation.generate import Sampler
from vaelab.models import HierarchicalVAE, build
from vaelab.models.hierarchical import gaussian_kl
from vaelab.models.nets import ResBlock
from vaelab.runs.config import TrainConfig


def _trained_ish(shape=(1, 28, 28), seed=0) -> HierarchicalVAE:
    """A small model with every zero-initialised layer perturbed, so priors and posteriors differ from N(0, I)."""
    torch.manual_seed(seed)
    model = build(
        TrainConfig(
            model="hierarchical", latent_dim=3, width=8, depth=1, latent_groups=1, likelihood="discretized_logistic"
        ),
        shape,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_gaussian_kl_against_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    qm, qlv, pm, plv = torch.randn(4, 5).unbind(0)
    want = kl_divergence(Normal(qm, (0.5 * qlv).exp()), Normal(pm, (0.5 * plv).exp()))
    assert torch.allclose(gaussian_kl(qm, qlv, pm, plv), want, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_terms_groups_and_shapes(shape):
    model = _trained_ish(shape)
    x = torch.randint(0, 256, (4, *shape), dtype=torch.uint8)
    t = model(x)
    assert t["kl_per_group"].shape == (4, 3)  # one group at each of 1x1, H/4, H/2
    assert torch.allclose(t["kl"], t["kl_per_group"].sum(1)) and (t["kl_per_group"] >= 0).all()
    assert torch.allclose(t["elbo"], -(t["recon"] + t["kl"]))
    assert t["mu"].shape == (4, 3) and torch.allclose(model.encode(x)[0], t["mu"], atol=1e-6)
    assert [m.shape[1] for m in model.group_means(x)] == [3, 3 * (shape[1] // 4) ** 2, 3 * (shape[1] // 2) ** 2]
    assert model.reconstruct(x).shape == (4, *shape)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo_and_its_mean_is_the_analytic_elbo():
    """K = 1: log p(x|z) + sum over groups of log p(z_g | z_<g) - log q(z_g | x, z_<g), whose average over draws is
    the ELBO with the analytic KL per group; and the bound tightens with K."""
    model = _trained_ish()
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        torch.manual_seed(1)
        t = model(x)
        torch.manual_seed(1)
        params, stats, _ = model._top_down(3, model.features(x))
        mc = model.likelihood.log_prob(params, x) - torch.stack([s[1] for s in stats], 1).sum(1)
        torch.manual_seed(1)
        assert torch.allclose(model.log_weights(x, None, 1)[:, 0], mc, atol=1e-3)
        assert torch.allclose(-t["recon"], model.likelihood.log_prob(params, x))
        lw = model.log_weights(x, None, 400)
        elbo = model(x.repeat_interleave(400, 0))["elbo"].view(3, 400).mean(1)  # analytic KL, averaged over draws
        assert torch.allclose(lw.mean(1), elbo, atol=4.0)  # E_q[log w] = ELBO, up to Monte-Carlo noise (~1 nat)
        assert (lw.std(1) > 1.0).all()  # and the test can tell: single weights scatter far wider than that
        iwae = torch.logsumexp(lw, 1) - torch.log(torch.tensor(400.0))
        assert (iwae >= lw.mean(1)).all()


def test_generation_goes_through_the_top_group_prior():
    model = _trained_ish()
    codes = Sampler(model).codes(4000, "prior", seed=0)
    pm, plv = model.prior._params()
    assert torch.allclose(torch.from_numpy(codes).mean(0), pm.detach(), atol=0.1)
    assert torch.allclose(torch.from_numpy(codes).var(0), plv.detach().exp(), rtol=0.15)
    model.temperature = 0.0  # lower groups at their prior means: decoding is deterministic
    z = torch.from_numpy(codes[:2]).float()
    assert torch.equal(model.decode(z), model.decode(z))
    model.temperature = 1.0
    assert not torch.equal(model.decode(z), model.decode(z))
    assert Sampler(model).images(5).shape == (5, 1, 28, 28)


def test_a_hierarchical_model_trains_and_evaluates_with_active_units_per_group(tiny_root, tmp_path):
    from conftest import tiny_config
    from vaelab.evaluation.evaluate import evaluate
    from vaelab.training.loop import train

    cfg = tiny_config(
        model="hierarchical",
        latent_dim=2,
        width=8,
        depth=1,
        latent_groups=1,
        likelihood="dmol",
        likelihood_components=2,
        epochs=2,
        ema=0.9,
        skip_grad_norm=1e9,
        iwae_samples=3,
    )
    last = train(cfg, tmp_path / "h", data_dir=tiny_root)
    assert last["epoch"] == 2 and last["skipped_large_grad"] == 0
    ev = evaluate(tmp_path / "h", data_dir=tiny_root)
    assert len(ev["kl_per_group"]) == 3 and len(ev["active_units_per_group"]) == 3
    assert ev["kl_estimator"] == "analytic" and ev["weights"] == "ema"
    assert ev["iwae_nll"] <= ev["neg_elbo"] + 1.0 and "bpd_iwae" in ev


def test_residual_blocks_start_as_the_identity_and_deep_stacks_keep_the_signal():
    block = ResBlock(8)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(block(x), x)
    model = build(TrainConfig(net="resnet", latent_dim=4, width=8, depth=6), (3, 32, 32))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    t = model(x)
    t["elbo"].mean().backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.encoder.net[0].weight.grad.abs().sum() > 0  # the stem still learns through 18 blocks

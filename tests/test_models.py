"""Shapes and named terms of the VAE for every architecture, likelihood and dataset shape."""

from __future__ import annotations

import pytest
import torch

from vaelab.config import TrainConfig
from vaelab.models import VAE


@pytest.mark.parametrize("arch", ["conv", "mlp"])
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
    assert model.sample(4).shape == (4, *shape)
    assert model.reconstruct(x).shape == (5, *shape)


def test_latent_dim_one_and_reference_layers():
    model = VAE((1, 28, 28), 1, "conv", "bernoulli")
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == \
        [(1, 32, (3, 3), (2, 2)), (32, 64, (3, 3), (2, 2))]
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

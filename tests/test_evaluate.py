"""Evaluation: known values of the IWAE bound, active units, PSNR and SSIM; eval.json from a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config

from vaelab import data as vdata
from vaelab.evaluate import evaluate, evaluate_model, iwae_nll, psnr, ssim
from vaelab.models import VAE
from vaelab.train import train


def _constant_model(likelihood="discretized_logistic"):
    """q(z|x) = p(z) = N(0, I) and a decoder that ignores z: every importance weight equals p(x|z)."""
    model = VAE((1, 28, 28), 3, "conv", likelihood)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model.eval()


def test_iwae_equals_recon_when_posterior_is_prior_and_decoder_constant():
    model = _constant_model()
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    t = model(x)
    assert torch.all(t["kl"] == 0)
    assert torch.allclose(iwae_nll(model, x, None, k=7), t["recon"], rtol=1e-5)


def test_iwae_bound_tightens_with_k():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 4, "conv", "discretized_logistic").eval()
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(1)
    neg_elbo = torch.stack([(lambda t: t["recon"] + t["kl"])(model(x)) for _ in range(20)]).mean(0)
    nll_1 = torch.stack([iwae_nll(model, x, None, 1) for _ in range(20)]).mean(0)
    nll_50 = iwae_nll(model, x, None, 50)
    assert torch.allclose(nll_1.mean(), neg_elbo.mean(), rtol=2e-3)  # K = 1 is the ELBO
    assert nll_50.mean() < neg_elbo.mean()


def test_psnr_known_value():
    a = torch.zeros(1, 1, 4, 4)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)


def test_ssim_invariants_and_reference():
    torch.manual_seed(0)
    a = torch.rand(3, 1, 28, 28)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-6)
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    more = (a + 0.5 * torch.randn_like(a)).clamp(0, 1)
    assert torch.all(ssim(a, more) < ssim(a, noisy)) and torch.all(ssim(a, noisy) < 1)
    assert torch.allclose(ssim(a, noisy), ssim(noisy, a), atol=1e-6)
    skimage = pytest.importorskip("skimage.metrics")
    for i in range(3):
        want = skimage.structural_similarity(a[i, 0].numpy(), noisy[i, 0].numpy(), data_range=1.0,
                                             gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ssim(a[i:i + 1], noisy[i:i + 1]).item() == pytest.approx(want, abs=2e-4)


def test_active_units_count_dimensions_whose_mean_varies():
    model = _constant_model()
    with torch.no_grad():  # mu_0 = sum of the hidden units: varies with x; mu_1, mu_2 stay 0
        model.encoder.fc[0].weight.normal_(0, 0.05)
        model.encoder.conv[0].weight.normal_(0, 0.5)
        model.encoder.conv[2].weight.normal_(0, 0.5)
        model.to_mu.weight[0].fill_(1.0)
    split = vdata.to_split(np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28), dtype=np.uint8),
                           np.zeros(50, np.int64), "cpu")
    out = evaluate_model(model, split, iwae_samples=2)
    assert out["active_units"] == 1 and out["au_variance"][1] == 0.0
    assert out["bpd_elbo"] == pytest.approx(out["neg_elbo"] / (784 * math.log(2)))


def test_evaluate_run_writes_eval_json(tiny_root, tmp_path):
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(epochs=2), tmp_path / "r", dataset=ds)
    out = evaluate(tmp_path / "r", data_dir=tiny_root, test_size=30, iwae_samples=10)
    saved = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert saved["test_size"] == 30 and saved["iwae_samples"] == 10 and len(saved["kl_per_dim"]) == 4
    assert saved["neg_elbo"] == pytest.approx(saved["recon"] + saved["kl"])
    assert saved["iwae_nll"] <= saved["neg_elbo"] + 1.0
    assert 0 <= saved["active_units"] <= 4 and 0 < saved["ssim"] <= 1
    assert out["neg_elbo"] == saved["neg_elbo"]
    again = evaluate(tmp_path / "r", data_dir=tiny_root, test_size=30, iwae_samples=10, write=False)
    assert again["neg_elbo"] == out["neg_elbo"]  # seeded: the same numbers twice


def test_bernoulli_runs_report_no_bits_per_dim(tiny_root, tmp_path):
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(likelihood="bernoulli"), tmp_path / "r", dataset=ds)
    out = evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2, write=False)
    assert "bpd_elbo" not in out and out["likelihood_discrete"] is False


def test_evaluate_on_another_dataset_of_the_same_shape(tiny_root, tmp_path, monkeypatch):
    from vaelab import VaelabError

    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(), tmp_path / "r", dataset=ds)
    with pytest.raises(VaelabError, match="same shape|run's image shape"):
        evaluate(tmp_path / "r", data_dir=tiny_root, on="cifar10-lossless")
    own = evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2)
    other = evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2, on="fashion-mnist")
    assert other["neg_elbo"] == own["neg_elbo"]  # naming its own dataset is the plain evaluation
    assert not (tmp_path / "r" / "eval-fashion-mnist.json").exists()


def test_cifar_model_on_the_lossless_subset(tmp_path):
    from conftest import cifar_members, write_cifar_tar

    write_cifar_tar(tmp_path / "cifar-10-python.tar.gz", cifar_members())
    rng = np.random.default_rng(0)
    (tmp_path / "cifar10-lossless-subset").mkdir()
    np.savez(tmp_path / "cifar10-lossless-subset" / "cifar10.npz",
             x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), y_train=rng.integers(0, 10, 20),
             x_test=rng.integers(0, 256, (15, 32, 32, 3), dtype=np.uint8), y_test=rng.integers(0, 10, 15))
    ds = vdata.load("cifar10", tmp_path)
    train(tiny_config(dataset="cifar10", train_size=60), tmp_path / "r", dataset=ds)
    out = evaluate(tmp_path / "r", data_dir=tmp_path, iwae_samples=2, on="cifar10-lossless")
    saved = json.loads((tmp_path / "r" / "eval-cifar10-lossless.json").read_text())
    assert saved["test_size"] == 15 and saved["dataset"] == "cifar10-lossless" and out["bpd_elbo"] > 0
    assert not (tmp_path / "r" / "eval.json").exists()

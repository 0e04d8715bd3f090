"""Evaluation: known values of the IWAE bound, active units, PSNR and SSIM; eval.json from a run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import tiny_config
from vaelab import data as vdata
from vaelab.evaluation.evaluate import evaluate, evaluate_model, iwae_nll, psnr, ssim
from vaelab.models import VAE
from vaelab.training.loop import train


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


class LinearGaussian(torch.nn.Module):
    """A VAE with a closed-form marginal: z ~ N(0, I), x/255 | z ~ N(W z + b, sigma^2 I), so
    p(x/255) = N(b, W W^T + sigma^2 I) (Tipping & Bishop 1999). q(z|x) = N(A x + c, diag exp(logvar)) is either the
    exact posterior or a deliberately wrong one. It offers the parts VAE.log_weights uses: encode, decode,
    likelihood, prior."""

    log_weights = VAE.log_weights  # the one method ELBO, IWAE and sampling share, on this model's parts
    _draws = VAE._draws  # its K posterior draws, which the iwae objective's terms share
    posterior_sample = VAE.posterior_sample

    def __init__(self, exact: bool, shape=(1, 2, 3), latent_dim=2, sigma=0.2, seed=0):
        from vaelab.models import GaussianPosterior, StandardNormal
        from vaelab.models.losses import Gaussian

        super().__init__()
        self.prior = StandardNormal(latent_dim)
        g = torch.Generator().manual_seed(seed)
        self.shape, self.latent_dim, self.num_classes, self.sigma = shape, latent_dim, 0, sigma
        d = shape[0] * shape[1] * shape[2]
        self.W = torch.randn(d, latent_dim, generator=g, dtype=torch.float64) * 0.3
        self.b = torch.full((d,), 0.5, dtype=torch.float64)
        self.likelihood = Gaussian(sigma)
        post_cov = torch.linalg.inv(torch.eye(latent_dim, dtype=torch.float64) + self.W.T @ self.W / sigma**2)
        self.A = post_cov @ self.W.T / sigma**2  # exact posterior mean: A (t - b)
        self.logvar = torch.log(torch.diagonal(post_cov)) if exact else torch.zeros(latent_dim, dtype=torch.float64)
        if exact:  # the exact posterior must be diagonal for q to equal it: rotate W so that W^T W is diagonal
            _, vecs = torch.linalg.eigh(self.W.T @ self.W)
            self.W = self.W @ vecs
            post_cov = torch.linalg.inv(torch.eye(latent_dim, dtype=torch.float64) + self.W.T @ self.W / sigma**2)
            self.A = post_cov @ self.W.T / sigma**2
            self.logvar = torch.log(torch.diagonal(post_cov))
        else:
            self.A = self.A * 0.5  # shrunk means and unit variances: a poor but valid q
        self.posterior = GaussianPosterior(1, latent_dim)
        self.posterior.gaussian = self.encode_features  # the posterior part, with this model's exact mean and variance

    def features(self, x, y=None):  # what VAE.posterior_sample hands the posterior
        return x.flatten(1).double() / 255.0

    def encode_features(self, t):
        mu = (t - self.b) @ self.A.T
        return mu.float(), self.logvar.float().expand_as(mu)

    def encode(self, x, y=None):
        return self.encode_features(self.features(x))

    def decode(self, z, y=None):
        return (z.double() @ self.W.T + self.b).float().view(-1, *self.shape)

    def log_px(self, x) -> torch.Tensor:
        t = x.flatten(1).double() / 255.0
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(t)


def test_iwae_is_exact_with_the_true_posterior_of_a_linear_gaussian_model():
    """With q = p(z|x) every importance weight equals p(x): any sign error in log p(z) or log q(z|x) breaks it."""
    model = LinearGaussian(exact=True)
    x = torch.randint(0, 256, (8, 1, 2, 3), dtype=torch.uint8)
    torch.manual_seed(0)
    for k in (1, 5):
        assert torch.allclose(-iwae_nll(model, x, None, k).double(), model.log_px(x), atol=2e-3)


def test_elbo_below_iwae_below_log_px_tightening_with_k():
    model = LinearGaussian(exact=False)
    x = torch.randint(60, 200, (6, 1, 2, 3), dtype=torch.uint8)
    exact = model.log_px(x)
    torch.manual_seed(0)
    bound = {
        k: torch.stack([-iwae_nll(model, x, None, k).double() for _ in range(40 if k < 100 else 4)]).mean(0)
        for k in (1, 10, 1000)
    }
    gap = {k: exact - v for k, v in bound.items()}
    assert torch.all(gap[1] > 0.05)  # a poor q: the ELBO (K = 1) is clearly below log p(x)
    assert torch.all(gap[1] > gap[10]) and torch.all(gap[10] > gap[1000]) and torch.all(gap[1000] > -0.1)
    assert torch.all(gap[1000] < 0.25 * gap[1])


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
        want = skimage.structural_similarity(
            a[i, 0].numpy(),
            noisy[i, 0].numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert ssim(a[i : i + 1], noisy[i : i + 1]).item() == pytest.approx(want, abs=2e-4)


def test_ssim_on_images_smaller_than_its_window_matches_scikit_image():
    """8x8 images (possible in a user's npz): a 7x7 window, sigma 1.5 * 7/11, which scikit-image builds from the
    same sigma; identical images score 1."""
    torch.manual_seed(0)
    a = torch.rand(3, 1, 8, 8)
    noisy = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-6) and torch.all(ssim(a, noisy) < 1)
    skimage = pytest.importorskip("skimage.metrics")
    for i in range(3):
        want = skimage.structural_similarity(
            a[i, 0].numpy(),
            noisy[i, 0].numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5 * 7 / 11,
            use_sample_covariance=False,
        )
        assert ssim(a[i : i + 1], noisy[i : i + 1]).item() == pytest.approx(want, abs=2e-4)


def test_active_units_count_dimensions_whose_mean_varies():
    model = _constant_model()
    with torch.no_grad():  # mu_0 = sum of the hidden units: varies with x; mu_1, mu_2 stay 0
        model.encoder.fc[0].weight.normal_(0, 0.05)
        model.encoder.conv[0].weight.normal_(0, 0.5)
        model.encoder.conv[2].weight.normal_(0, 0.5)
        model.posterior.to_mu.weight[0].fill_(1.0)
    split = vdata.to_split(
        np.random.default_rng(0).integers(0, 256, (50, 1, 28, 28), dtype=np.uint8), np.zeros(50, np.int64), "cpu"
    )
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
    assert saved["kl"] == pytest.approx(sum(saved["kl_per_dim"]), rel=1e-6)  # float32 per-image sums
    assert saved["active_units"] == sum(v > 0.01 for v in saved["au_variance"])
    assert saved["bpd_iwae"] == pytest.approx(saved["iwae_nll"] / (784 * math.log(2)), rel=1e-6)
    assert saved["chance_accuracy"] == pytest.approx(
        np.bincount(ds.y_test[vdata.test_indices(len(ds.x_test), 30)]).max() / 30
    )
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
    np.savez(
        tmp_path / "cifar10-lossless-subset" / "cifar10.npz",
        x_train=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_train=rng.integers(0, 10, 20),
        x_test=rng.integers(0, 256, (15, 32, 32, 3), dtype=np.uint8),
        y_test=rng.integers(0, 10, 15),
    )
    ds = vdata.load("cifar10", tmp_path)
    train(tiny_config(dataset="cifar10", train_size=60), tmp_path / "r", dataset=ds)
    out = evaluate(tmp_path / "r", data_dir=tmp_path, iwae_samples=2, on="cifar10-lossless")
    saved = json.loads((tmp_path / "r" / "eval-cifar10-lossless.json").read_text())
    assert saved["test_size"] == 15 and saved["dataset"] == "cifar10-lossless"
    assert out["bpd_elbo"] == pytest.approx(out["neg_elbo"] / (3072 * math.log(2)))
    assert not (tmp_path / "r" / "eval.json").exists()


def test_active_units_threshold_is_burdas_0_01():
    """Variances just either side of 0.01: the count is 1 only for that threshold."""
    from vaelab.evaluation.evaluate import active_units

    base = torch.tensor([-1.0, 1.0]).repeat(500)[:, None]  # unbiased variance 1000/999
    mu = torch.cat(
        [base * math.sqrt(0.0101 * 999 / 1000), base * math.sqrt(0.0099 * 999 / 1000), torch.zeros(1000, 1)], 1
    )
    n, var = active_units(mu)
    assert n == 1 and var[0].item() == pytest.approx(0.0101) and var[1].item() == pytest.approx(0.0099)


def test_raw_weights_evaluate_separately_from_the_ema(tiny_root, tmp_path, capsys):
    """With --ema the run's model is the moving average; `evaluate --raw` scores the raw weights into their own
    file and the two differ. A run without separate raw weights says so in one line."""
    from vaelab.app.cli import main

    train(tiny_config(epochs=1, ema=0.5, train_size=64), tmp_path / "e", data_dir=tiny_root)
    ema = evaluate(tmp_path / "e", data_dir=tiny_root, iwae_samples=2)
    raw = evaluate(tmp_path / "e", data_dir=tiny_root, iwae_samples=2, raw=True)
    assert ema["weights"] == "ema" and raw["weights"] == "raw" and raw["neg_elbo"] != ema["neg_elbo"]
    assert json.loads((tmp_path / "e" / "eval-raw.json").read_text())["neg_elbo"] == raw["neg_elbo"]
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["neg_elbo"] == ema["neg_elbo"]
    train(tiny_config(epochs=1, train_size=64), tmp_path / "plain", data_dir=tiny_root)
    assert main(["evaluate", str(tmp_path / "plain"), "--raw", "--data-dir", str(tiny_root)]) == 2
    assert "holds no separate raw weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    "fields,want", [({}, "analytic"), ({"posterior": "iaf"}, "monte carlo"), ({"prior": "mog"}, "monte carlo")]
)
def test_eval_says_how_the_kl_was_computed(tiny_root, tmp_path, fields, want):
    train(tiny_config(epochs=1, train_size=64, **fields), tmp_path / "r", data_dir=tiny_root)
    ev = evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2)
    assert ev["kl_estimator"] == want and ("kl_per_dim" in ev) == (want == "analytic")


def test_evaluation_numbers_do_not_depend_on_the_memory_layout():
    """evaluate_model switches convolutions to channels-last for speed: the metrics must be those of the
    contiguous layout (same seed, same noise) up to float rounding."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 4, "conv", "discretized_logistic")
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8)
    split = vdata.to_split(x.numpy(), np.zeros(40, np.int64), "cpu")
    torch.manual_seed(1)
    want = {"neg_elbo": -model(x)["elbo"].mean().item()}
    got = evaluate_model(model, split, iwae_samples=3, seed=1)
    assert got["neg_elbo"] == pytest.approx(want["neg_elbo"], rel=1e-5)
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)


def _sharp_model(likelihood: str) -> VAE:
    """A model whose decoder is confident (scale e^-4 against pixel bins of 2/255): where bf16 rounding shows."""
    torch.manual_seed(0)
    model = VAE((1, 28, 28), 8, "conv", likelihood).eval()
    last = model.decoder.deconv[-1]
    with torch.no_grad():
        last.weight.mul_(0.1)
        last.bias.copy_(torch.tensor([0.3, -4.0]) if likelihood == "discretized_logistic" else torch.tensor([2.0]))
    return model


@pytest.mark.parametrize("likelihood", ["discretized_logistic", "bernoulli"])
def test_bf16_iwae_stays_within_monte_carlo_noise_of_fp32(likelihood, monkeypatch):
    """The IWAE under bf16 autocast shifts the test mean by less than 3 standard errors of its own Monte-Carlo noise
    (two fp32 seeds); with the output layer in bf16 too, the discretized logistic's shift is hundreds of them."""
    from vaelab.models import nets

    model = _sharp_model(likelihood)
    x = torch.randint(60, 120, (300, 1, 28, 28), dtype=torch.uint8)

    def nll(bf16, seed):
        torch.manual_seed(seed)
        return iwae_nll(model, x, None, 20, bf16=bf16).double()

    fp32_a, fp32_b = nll(False, 0), nll(False, 1)
    se = (fp32_a - fp32_b).std().item() / math.sqrt(2 * len(x))  # standard error of one seed's test mean
    assert abs((nll(True, 0) - fp32_a).mean().item()) < 3 * se
    if likelihood == "discretized_logistic":
        monkeypatch.setattr(nets, "fp32_out", lambda layer, h: layer(h))
        assert abs((nll(True, 0) - fp32_a).mean().item()) > 30 * se


def test_precision_auto_follows_the_device_and_is_recorded(tiny_root, tmp_path, monkeypatch):
    from vaelab import VaelabError
    from vaelab.evaluation import evaluate as ev

    assert ev.iwae_precision("fp32", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(ev, "bf16_native", lambda device: False)
    assert ev.iwae_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(ev, "bf16_native", lambda device: True)
    assert ev.iwae_precision("auto", torch.device("cpu")) == "bf16"
    with pytest.raises(VaelabError, match="unknown precision 'fp16'"):
        ev.iwae_precision("fp16", torch.device("cpu"))
    run = tmp_path / "r"
    train(tiny_config(epochs=1), run, data_dir=str(tiny_root))
    a = evaluate(run, data_dir=str(tiny_root), precision="fp32", write=False)
    b = evaluate(run, data_dir=str(tiny_root), precision="bf16", write=False)
    assert (a["iwae_precision"], b["iwae_precision"]) == ("fp32", "bf16")
    assert a["neg_elbo"] == b["neg_elbo"]  # only the IWAE's passes change precision
    assert b["iwae_nll"] == pytest.approx(a["iwae_nll"], rel=2e-3)

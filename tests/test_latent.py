"""Latent tools: known answers on synthetic codes, conditional generation, probes, the explore CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.evaluation import generate
from vaelab.exploration import latent
from vaelab.models import VAE
from vaelab.training.loop import train


def clusters(n=200, d=3, seed=0, spread=0.1):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])[:, :d]
    return centres[y] + spread * rng.standard_normal((n, d)), y, centres


def test_centroids_and_attribute_vectors():
    mu, y, centres = clusters()
    c = latent.class_centroids(mu, y, 4)
    assert np.allclose(c[:3], centres, atol=0.05) and np.isnan(c[3]).all()
    v = latent.attribute_vector(c, 0, 1)
    strip = latent.arithmetic(c[0], v, [0.0, 0.5, 1.0])
    assert np.allclose(strip[0], c[0]) and np.allclose(strip[2], c[1])


def test_class_gaussians_recover_mean_and_covariance():
    rng = np.random.default_rng(1)
    cov = np.array([[2.0, 0.8], [0.8, 1.0]])
    mu = np.concatenate(
        [rng.multivariate_normal([3, -1], cov, 4000), rng.multivariate_normal([-3, 2], np.eye(2), 4000)]
    )
    y = np.repeat([0, 1], 4000)
    g = generate.ClassGaussians(mu, y, 2)
    assert np.allclose(g.means[0], [3, -1], atol=0.08) and np.allclose(g.covs[0], cov, atol=0.12)
    s = g.sample(1, 5000, seed=0)
    assert np.allclose(s.mean(0), [-3, 2], atol=0.08)
    with pytest.raises(ValueError, match="class 2 has 0 codes"):
        generate.ClassGaussians(mu, y, 3)


def test_mixture_on_aggregate_posterior_finds_the_clusters():
    mu, y, centres = clusters(600)
    gmm = generate.fit_mixture(mu, n_components=3)
    assert np.allclose(np.sort(gmm.means_, axis=0), np.sort(centres, axis=0), atol=0.05)


def test_sampler_fits_once_and_draws_reproducibly():
    mu, y, centres = clusters(600)
    calls = []
    s = generate.Sampler(VAE((1, 28, 28), 3, "conv", "bernoulli"), lambda: calls.append(1) or (mu, y))
    a, b = s.codes(50, "gmm", seed=1), s.codes(50, "gmm", seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, s.codes(50, "gmm", seed=2))
    k2 = s.codes(400, "class-gaussian", 2, seed=0)
    assert np.allclose(k2.mean(0), centres[2], atol=0.05)
    assert len(calls) == 2  # codes read once per fitted model, however many draws
    p = s.codes(4000, "prior", seed=3)
    assert p.shape == (4000, 3) and abs(p.mean()) < 0.05 and abs(p.std() - 1) < 0.05
    assert np.array_equal(p, s.codes(4000, "prior", seed=3))
    with pytest.raises(VaelabError, match="needs a class"):
        s.codes(4, "class-gaussian")
    with pytest.raises(VaelabError, match="unknown sampler"):
        s.codes(4, "flow")
    with pytest.raises(VaelabError, match="needs a conditional run"):
        s.images(4, "prior", class_index=1)
    with pytest.raises(VaelabError, match="no training codes"):
        generate.Sampler(s.model).codes(4, "gmm")


def test_sampler_draws_from_the_models_own_prior_and_gives_a_cvae_its_labels():
    torch.manual_seed(0)
    mog = VAE((1, 28, 28), 2, "conv", "bernoulli", prior="mog", prior_components=2)
    with torch.no_grad():
        mog.prior.means.copy_(torch.tensor([[8.0, 8.0], [8.0, 8.0]]))
        mog.prior.logvars.fill_(-6.0)
    z = generate.Sampler(mog).codes(500, "prior")
    assert np.allclose(z, 8.0, atol=0.3)  # the learned mixture, not N(0, I)
    cvae = VAE((1, 28, 28), 2, "conv", "bernoulli", num_classes=10)
    seen = []
    cvae.decode = lambda z, y=None: seen.append(y) or torch.zeros(len(z), 1, 28, 28)
    gen = generate.Sampler(cvae)
    gen.images(12)
    gen.images(3, class_index=7)
    assert seen[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and seen[1].tolist() == [7, 7, 7]


def assert_real_figure(path):
    """A PNG that decodes, is of a plausible size, and is not one flat colour."""
    img = np.asarray(Image.open(path).convert("L"))
    assert min(img.shape) >= 100 and img.std() > 5, path


def test_probes_on_separable_and_random_codes():
    mu, y, _ = clusters(300)
    m = latent.organisation(mu[:200], y[:200], mu[200:], y[200:])
    assert m["probe_accuracy"] == 1.0 and m["knn_accuracy"] == 1.0 and m["silhouette"] > 0.9
    assert 0.3 <= m["chance_accuracy"] < 0.5
    noise = np.random.default_rng(3).standard_normal((300, 3))
    r = latent.organisation(noise[:200], y[:200], noise[200:], y[200:])
    assert r["probe_accuracy"] < 0.6 and abs(r["silhouette"]) < 0.1


def test_interpolations_and_traversals():
    z0, z1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    line, arc = latent.lerp(z0, z1, 5), latent.slerp(z0, z1, 5)
    assert torch.allclose(line[0], z0) and torch.allclose(arc[-1], z1, atol=1e-6)
    assert torch.allclose(arc.norm(dim=1), torch.ones(5), atol=1e-6)  # stays on the circle
    assert line[2].norm() < 0.8
    # given fractions t land on the same path as the evenly spaced points
    assert torch.allclose(latent.lerp(z0, z1, [0.25, 0.5]), line[1:3])
    assert torch.allclose(latent.slerp(z0, z1, [0.75]), arc[3:4], atol=1e-6)
    t = latent.traverse(torch.zeros(4), [1, 3], torch.tensor([-1.0, 2.0]))
    assert t.tolist() == [[0, -1, 0, 0], [0, 2, 0, 0], [0, 0, 0, -1], [0, 0, 0, 2]]
    assert latent.manifold_grid(3).shape == (9, 2)


def test_nearest_neighbours():
    pool = np.arange(5 * 4, dtype=np.float32).reshape(5, 1, 2, 2)
    assert list(generate.nearest_neighbours(pool[[3, 1]] + 0.1, pool)) == [3, 1]


def test_explore_sample_class_and_cvae(tiny_root, tmp_path, capsys):
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(latent_dim=3, epochs=2), tmp_path / "r", dataset=ds)
    assert main(["explore", str(tmp_path / "r"), "--data-dir", str(tiny_root), "--no-classifier"]) == 0
    out = capsys.readouterr().out
    assert "probe_accuracy=" in out and "chance_accuracy=" in out and "fd_prior" not in out
    for name in ("attribute_arithmetic.png", "class_conditional.png", "prior_vs_mixture.png"):
        assert_real_figure(tmp_path / "r" / "explore" / name)
    assert list((tmp_path / "r").glob("latents-train-*.npz"))  # encodings cached in the run directory
    assert (
        main(
            [
                "sample",
                str(tmp_path / "r"),
                "--class",
                "Sneaker",
                "--n",
                "4",
                "--nrow",
                "4",
                "--data-dir",
                str(tiny_root),
            ]
        )
        == 0
    )
    assert main(["sample", str(tmp_path / "r"), "--class", "Sneakers", "--data-dir", str(tiny_root)]) == 2
    assert "unknown class 'Sneakers'" in capsys.readouterr().err
    train(tiny_config(latent_dim=3, conditional=True), tmp_path / "c", dataset=ds)
    for cls in ds.classes:
        assert (
            main(
                [
                    "sample",
                    str(tmp_path / "c"),
                    "--class",
                    cls,
                    "--n",
                    "2",
                    "--nrow",
                    "2",
                    "--png",
                    str(tmp_path / "c.png"),
                ]
            )
            == 0
        )
        assert Image.open(tmp_path / "c.png").size[0] > 0
    assert main(["explore", str(tmp_path / "c"), "--data-dir", str(tiny_root), "--no-classifier"]) == 0


def test_eval_json_has_latent_organisation(tiny_root, tmp_path):
    from vaelab.evaluation.evaluate import evaluate

    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(epochs=2), tmp_path / "r", dataset=ds)
    ev = evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2)
    for k in (
        "probe_accuracy",
        "knn_accuracy",
        "silhouette",
        "chance_accuracy",
        "probe_accuracy_untrained",
        "probe_accuracy_pca",
    ):
        assert k in ev
    counts = np.bincount(ds.y_test)
    assert ev["chance_accuracy"] == pytest.approx(counts.max() / counts.sum())  # the measured share, not 0.1


def test_probe_baselines_on_images_whose_class_is_in_the_pixels():
    """Class = which band is bright: PCA of the pixels separates it perfectly; the untrained encoder is a fixed,
    reproducible baseline (same value twice), computed without changing the model's weights."""
    from conftest import make_images
    from vaelab.models import VAE

    rng = np.random.default_rng(0)
    y = np.tile(np.arange(10), 30)
    x = make_images(rng, len(y), (1, 28, 28), y)
    tr, te = vdata.to_split(x[:200], y[:200], "cpu"), vdata.to_split(x[200:], y[200:], "cpu")
    torch.manual_seed(1)
    model = VAE((1, 28, 28), 8, "conv", "bernoulli")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = latent.probe_baselines(model, tr, te)
    assert a["probe_accuracy_pca"] == 1.0
    assert a == latent.probe_baselines(model, tr, te)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

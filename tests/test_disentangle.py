"""Disentanglement: the shapes2d renderer and loader, the metrics on codes with known answers, the objectives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from conftest import TINY_SHAPES, tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.data import factors
from vaelab.evaluation import disentangle as D
from vaelab.models.losses import OBJECTIVES, TCCritic, objective

# ---------------------------------------------------------------- shapes2d


def test_sprites_are_binary_deterministic_and_translate_exactly():
    f = np.array([[2, 1, 3, 0, 0], [2, 1, 3, 31, 0], [2, 1, 3, 0, 31], [0, 5, 0, 10, 20]])
    a, b = factors.render(f), factors.render(f)
    assert a.dtype == np.uint8 and set(np.unique(a)) == {0, 1} and np.array_equal(a, b)
    # moving pos_x by 31 steps moves the same sprite 31 pixels right, pos_y moves it down
    assert np.array_equal(a[1][:, 31:], a[0][:, :33]) and a[0][:, 33:].sum() == 0
    assert np.array_equal(a[2][31:], a[0][:33])
    # scale grows the area, orientation turns it (a square at 0 and a quarter turn is the same square)
    areas = [factors.sprite(0, s, 0).sum() for s in range(6)]
    assert areas == sorted(areas) and areas[0] < areas[-1] / 3
    assert np.array_equal(factors.sprite(0, 5, 0), factors.sprite(0, 5, 10))  # 10 of 40 steps: 90 degrees
    assert not np.array_equal(factors.sprite(1, 5, 0), factors.sprite(1, 5, 10))  # an ellipse is not
    # the three shapes differ
    shapes = [factors.sprite(s, 5, 0) for s in range(3)]
    assert not np.array_equal(shapes[0], shapes[1]) and not np.array_equal(shapes[1], shapes[2])


def test_shapes2d_loads_with_factors_and_a_fixed_test_split(tiny_root):
    ds = vdata.load("shapes2d", tiny_root)
    n = int(np.prod(TINY_SHAPES))
    assert ds.shape == (1, 64, 64) and len(ds.x_train) + len(ds.x_test) == n
    assert len(ds.x_test) == round(0.1 * n)
    assert set(np.unique(ds.x_train)) == {0, 255}
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert np.array_equal(ds.y_train, ds.factors_train[:, 0]) and ds.classes == ("square", "ellipse", "heart")
    # every image is the rendering of its factors; every combination appears once across the two splits
    assert np.array_equal(ds.x_train[:, 0] // 255, factors.render(ds.factors_train, TINY_SHAPES))
    both = np.concatenate([ds.factors_train, ds.factors_test])
    assert len(np.unique(np.ravel_multi_index(both.T, TINY_SHAPES))) == n
    again = vdata.load("shapes2d", tiny_root)  # from the decoded cache, memory-mapped
    assert np.array_equal(again.x_test, ds.x_test) and np.array_equal(again.factors_test, ds.factors_test)
    grid = factors.FactorGrid(again)
    f = grid.sample_factors(50, np.random.default_rng(0))
    assert grid.sizes == TINY_SHAPES
    assert np.array_equal(grid.images(f)[:, 0] // 255, factors.render(f, TINY_SHAPES))


def test_shapes2d_32_is_the_2x2_means_of_shapes2d_and_keeps_every_factor_visible(tiny_root):
    full, half = vdata.load("shapes2d", tiny_root), vdata.load("shapes2d-32", tiny_root)
    assert half.shape == (1, 32, 32) and vdata.spec("shapes2d-32").shape == half.shape
    assert np.array_equal(half.factors_train, full.factors_train) and np.array_equal(half.y_test, full.y_test)
    # a pixel is the rounded mean of its 2x2 block: grey levels 0, 64, 128, 191, 255 only
    means = full.x_test.astype(float).reshape(-1, 1, 32, 2, 32, 2).mean((3, 5))
    assert np.array_equal(half.x_test, np.floor(means + 0.5).astype(np.uint8))
    assert set(np.unique(half.x_train)) <= {0, 64, 128, 191, 255}

    # halving merges few images that differ at 64x64: here 8 of 272 (small sprites turned by a few degrees); on the
    # full grid 512 of 437,248 (a square turned by 90 degrees is one image at both sizes)
    def distinct(ds):
        images = np.concatenate([ds.x_train, ds.x_test])
        return len(np.unique(images.reshape(len(images), -1), axis=0))

    assert 0.95 * distinct(full) <= distinct(half) < distinct(full) < int(np.prod(TINY_SHAPES))
    grid = factors.FactorGrid(half)
    f = grid.sample_factors(20, np.random.default_rng(1))
    assert grid.images(f).shape == (20, 1, 32, 32)


def _npz(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def test_a_dsprites_file_loads_and_bad_ones_are_refused(tmp_path):
    sizes = (2, 1, 2, 2, 2)
    cls = factors.grid(sizes)
    latents = np.concatenate([np.zeros((len(cls), 1), np.int64), cls], 1)
    good = tmp_path / "ok" / "dsprites" / vdata.DSPRITES_FILE
    _npz(good, imgs=factors.render(cls, sizes), latents_classes=latents, metadata=np.array([1]))
    ds = vdata.load("dsprites", tmp_path / "ok")
    assert len(ds.x_train) + len(ds.x_test) == 16 and ds.factors_train.shape[1] == 5
    cases = {
        "imgs": dict(latents_classes=latents),
        "binary": dict(imgs=factors.render(cls, sizes) * 3, latents_classes=latents),
        "grid": dict(imgs=factors.render(cls, sizes), latents_classes=np.concatenate([latents[:1], latents[:-1]])),
        "expected uint8": dict(imgs=np.zeros((16, 32, 32), np.uint8), latents_classes=latents),
    }
    for i, (msg, arrays) in enumerate(cases.items()):
        _npz(tmp_path / f"bad{i}" / "dsprites" / vdata.DSPRITES_FILE, **arrays)
        with pytest.raises(VaelabError, match=msg):
            vdata.load("dsprites", tmp_path / f"bad{i}")
    (tmp_path / "junk" / "dsprites").mkdir(parents=True)
    (tmp_path / "junk" / "dsprites" / vdata.DSPRITES_FILE).write_bytes(b"not a zip")
    with pytest.raises(VaelabError, match="not a readable"):
        vdata.load("dsprites", tmp_path / "junk")


def test_a_missing_dsprites_file_is_one_line(tmp_path, capsys):
    assert main(["train", "--dataset", "dsprites", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and vdata.DSPRITES_FILE in err


# ---------------------------------------------------------------- metrics with known answers


class FactorsAsImages:
    """A factor source whose 'images' are the factor values themselves, so a representation is any map of them."""

    names = ("a", "b", "c", "d", "e")
    sizes = (3, 6, 10, 8, 8)

    def sample_factors(self, n, rng):
        return np.stack([rng.integers(0, s, n) for s in self.sizes], 1)

    def images(self, f):
        return np.asarray(f, float)


def _codes():
    g = FactorsAsImages()
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
    mean = np.array([(s - 1) / 2 for s in g.sizes])
    std = np.array([np.sqrt((s * s - 1) / 12) for s in g.sizes])
    return g, {
        "identity": lambda f: f.copy(),
        "rotation": lambda f: ((f - mean) / std) @ q,  # every dimension mixes every factor
        "noise": lambda f: np.random.default_rng(len(f)).normal(size=f.shape),
    }


@pytest.fixture(scope="module")
def known():
    g, reps = _codes()
    return {name: D.scores(r, g, seed=0) for name, r in reps.items()}


def test_a_code_that_copies_the_factors_scores_one(known):
    s = known["identity"]
    for k in ("beta_vae", "factor_vae", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert s[k] >= 0.97, (k, s[k])
    assert s["mig"] >= 0.95
    assert s["dim_factor"] == ["a", "b", "c", "d", "e"]


def test_a_rotated_code_scores_clearly_lower(known):
    r, i = known["rotation"], known["identity"]
    for k in ("mig", "sap", "dci_disentanglement", "dci_completeness"):
        assert r[k] < 0.6 * i[k], (k, r[k], i[k])
    assert r["factor_vae"] < 0.9 and r["beta_vae"] < 0.95
    assert r["dci_informativeness"] > 0.8  # the information is all there, only mixed


def test_pure_noise_scores_zero_or_chance(known):
    n = known["noise"]
    assert n["mig"] < 0.05 and n["sap"] < 0.05 and n["dci_disentanglement"] < 0.1
    chance = 1 / 5  # the classifier scores name one of five factors
    assert abs(n["beta_vae"] - chance) < 0.1 and abs(n["factor_vae"] - chance) < 0.1
    # SAP ranks the codes: copy > rotation > noise
    assert known["identity"]["sap"] > known["rotation"]["sap"] > n["sap"]


def test_metrics_are_seeded_and_factor_vae_ignores_collapsed_dimensions():
    g, reps = _codes()
    assert D.scores(reps["rotation"], g, seed=3) == D.scores(reps["rotation"], g, seed=3)
    dead = lambda f: np.concatenate([f, np.zeros((len(f), 3))], 1)  # noqa: E731 (three collapsed units)
    sizes = D.Sizes(factor_train=100, factor_eval=100)
    assert D.factor_vae_score(dead, g, sizes, np.random.default_rng(0)) == 1.0
    assert D.factor_vae_score(lambda f: np.zeros((len(f), 4)), g, sizes, np.random.default_rng(0)) == 0.0


def test_mig_by_hand():
    """Two factors, a code that copies the first and half of the second: gaps computed from entropies."""
    f = np.stack(np.meshgrid(np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 2).repeat(10, 0)
    z = np.stack([f[:, 0], f[:, 1] // 2], 1).astype(float)
    # factor 0: I(z0) = log 4, I(z1) = 0 -> gap 1; factor 1: I(z1) = log 2, I(z0) = 0 -> gap log2/log4 = 0.5
    assert D.mig(z, f, bins=4) == pytest.approx(0.75)


# ---------------------------------------------------------------- objectives


def _terms(b=32, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu, logvar = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g) * 0.1
    z = mu + torch.randn(b, d, generator=g) * (0.5 * logvar).exp()
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1)
    return dict(mu=mu, logvar=logvar, z=z, recon=torch.full((b,), 10.0), kl=kl)


def test_dip_vae_penalties_by_hand():
    t = _terms()
    cfg = tiny_config(dip_lambda=2.0)
    base = (t["recon"] + t["kl"]).mean()
    mu = t["mu"] - t["mu"].mean(0)
    cov = mu.T @ mu / len(mu)
    off = (cov - torch.diag(torch.diagonal(cov))).pow(2).sum()
    want_i = base + 2.0 * off + 20.0 * (torch.diagonal(cov) - 1).pow(2).sum()
    assert OBJECTIVES["dip_vae_i"](t, 1.0, cfg) == pytest.approx(float(want_i), rel=1e-5)
    cov2 = cov + torch.diag(t["logvar"].exp().mean(0))
    want_ii = base + 2.0 * (
        (cov2 - torch.diag(torch.diagonal(cov2))).pow(2).sum() + (torch.diagonal(cov2) - 1).pow(2).sum()
    )
    assert OBJECTIVES["dip_vae_ii"](t, 1.0, cfg) == pytest.approx(float(want_ii), rel=1e-5)
    # a code already decorrelated with unit variance pays nothing
    white = dict(
        t,
        mu=torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]),
        logvar=torch.full((4, 2), -30.0),
        recon=torch.zeros(4),
        kl=torch.zeros(4),
    )
    assert float(OBJECTIVES["dip_vae_i"](white, 1.0, cfg)) == pytest.approx(0.0, abs=1e-6)


def test_the_factor_vae_critic_learns_to_spot_correlated_codes():
    """Codes whose two dimensions are equal (total correlation) against their dimension-wise shuffle: the critic's
    loss falls well below log 4 (chance), its logit is higher on the real codes, and factor_vae adds gamma times it."""
    torch.manual_seed(0)
    critic = TCCritic(2, hidden=32)
    opt = torch.optim.Adam(critic.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        z = torch.randn(128, 1).repeat(1, 2)
        loss = critic.loss(z, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * np.log(4)
    z = torch.randn(512, 1).repeat(1, 2)
    assert critic(z).mean() > critic(torch.randn(512, 2)).mean() + 1.0
    t = dict(_terms(), tc=torch.full((32,), 0.5))
    cfg = tiny_config(objective="factor_vae", factor_gamma=4.0)
    assert float(objective(t, 1.0, cfg)) == pytest.approx(float((t["recon"] + t["kl"]).mean() + 2.0), rel=1e-6)


@pytest.mark.parametrize("obj", ["elbo", "beta_tcvae", "factor_vae", "dip_vae_i", "dip_vae_ii", "capacity"])
def test_every_disentangling_objective_trains_on_shapes2d_and_is_scored(tiny_root, tmp_path, obj):
    from vaelab.evaluation.evaluate import evaluate
    from vaelab.training.loop import train

    cfg = tiny_config(
        dataset="shapes2d", net="conv4", likelihood="bernoulli", objective=obj, val_size=40, latent_dim=4, epochs=1
    )
    train(cfg, tmp_path / "r", data_dir=tiny_root)
    small = D.Sizes(batch=8, beta_train=20, beta_eval=20, factor_train=20, factor_eval=20, variance=200, codes=300)
    ev = evaluate(tmp_path / "r", data_dir=tiny_root, disentanglement_sizes=small)
    dis = ev["disentanglement"]
    assert set(D.METRICS) <= set(dis) and all(np.isfinite(dis[k]) for k in D.METRICS)
    assert len(dis["dim_factor"]) == 4 and set(dis["dim_factor"]) <= set(factors.FACTOR_NAMES)


def test_objectives_that_need_a_gaussian_code_refuse_other_models():
    for obj in ("factor_vae", "dip_vae_i", "dip_vae_ii"):
        with pytest.raises(VaelabError, match="factorised standard prior"):
            tiny_config(objective=obj, prior="mog")
        with pytest.raises(VaelabError, match="hierarchical model supports"):
            tiny_config(objective=obj, model="hierarchical", likelihood="dmol")
    with pytest.raises(VaelabError, match="factor_gamma and dip_lambda"):
        tiny_config(factor_gamma=-1.0)


@pytest.mark.slow
def test_a_disentanglement_study_reports_its_metrics_findings_and_traversals(tiny_root, tmp_path, monkeypatch):
    import pandas as pd

    from vaelab import study
    from vaelab.app.commands import report

    small = D.Sizes(batch=8, beta_train=20, beta_eval=20, factor_train=20, factor_eval=20, variance=200, codes=300)
    monkeypatch.setattr(D, "Sizes", lambda: small)
    spec = study.parse_spec(
        {
            "name": "dis",
            "base": {
                "dataset": "shapes2d",
                "net": "conv4",
                "likelihood": "bernoulli",
                "latent_dim": 3,
                "epochs": 1,
                "batch_size": 32,
                "val_size": 40,
                "test_size": 30,
                "iwae_samples": 2,
            },
            "sweep": [
                {"grid": {"beta": [1.0, 4.0], "seed": [0, 1]}},
                {"grid": {"factor_gamma": [10.0], "seed": [0, 1]}, "base": {"objective": "factor_vae"}},
            ],
        },
        "t",
    )
    out = tmp_path / "S"
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 6}
    df = pd.read_csv(out / "results.csv")
    assert df[list(D.METRICS)].notna().all().all()
    report(out, data_dir=tiny_root, classifier=False)
    md = (out / "report" / "summary.md").read_text()
    assert "## Disentanglement" in md and "| shapes2d | factor_vae | 10 |" in md
    assert "larger β gives more disentangled codes" in md and "the objective matters more than the seed" in md
    assert "recon_disentanglement_shapes2d.png" in md and md.count("labelled with the factor it tells most") >= 2
    assert (out / "report" / "fig" / "recon_disentanglement_shapes2d.png").is_file()
    best = df.sort_values(["mig", "seed"], ascending=[False, True]).iloc[0]
    assert f"Highest MIG: {best['mig']:.2f} ({best['objective']}" in md
    reach = int((df.loc[df["objective"] == "factor_vae", "mig"] >= 0.2).sum())
    assert f"factor_vae {reach} of 2" in md and "Runs reaching MIG ≥ 0.2: elbo " in md


def test_shapes2d_is_rendered_into_the_cache_when_nowhere_else(tmp_path, monkeypatch):
    monkeypatch.setattr(factors, "FACTOR_SIZES", TINY_SHAPES)  # the full grid is 3 GB: the same code, smaller
    empty = tmp_path / "empty"
    empty.mkdir()
    assert {r["dataset"]: r for r in vdata.status()}["shapes2d"]["status"] == "not yet rendered"
    ds = vdata.load("shapes2d", empty)  # offline and with an explicit folder: rendering needs no download
    assert len(ds.x_train) + len(ds.x_test) == int(np.prod(TINY_SHAPES))
    assert (vdata.cache_dir() / "data" / "shapes2d" / vdata.SHAPES2D_FILE).is_file()
    assert {r["dataset"]: r for r in vdata.status()}["shapes2d"]["status"] == "generated"

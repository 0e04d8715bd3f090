"""Reference classifier: learns, is cached and reused; Fréchet distance known values; generation scores."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import quick_classifier, tiny_config
from vaelab import data as vdata
from vaelab.evaluation import scoring
from vaelab.training import classifier
from vaelab.training.loop import train


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 4)) @ rng.standard_normal((4, 4))
    assert classifier.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    d = np.array([1.0, -2.0, 0.5, 3.0])
    assert classifier.frechet_distance(a, a + d) == pytest.approx(float(d @ d), rel=1e-6)
    # b = 2a: mean doubles, covariance x4: FD = |mu|^2 + tr(S + 4S - 2*2S) = |mu|^2 + tr(S)
    want = float((a.mean(0) ** 2).sum() + np.trace(np.cov(a, rowvar=False)))
    assert classifier.frechet_distance(a, 2 * a) == pytest.approx(want, rel=1e-5)


def test_classifier_learns_and_is_cached(tiny_root, monkeypatch):
    ds = vdata.load("fashion-mnist", tiny_root)
    model, info = classifier.reference_classifier("fashion-mnist", tiny_root, epochs=8, ds=ds)
    assert info["test_accuracy"] > 0.5  # the synthetic classes are bright bands at class-dependent heights
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("retrained a cached classifier"))
    again, info2 = classifier.reference_classifier("fashion-mnist", tiny_root, epochs=8, ds=ds)
    assert info2 == info
    x = vdata.to_float(vdata.to_split(ds.x_test, ds.y_test, "cpu").x)
    assert np.allclose(classifier.predict(model, x)[0].numpy(), classifier.predict(again, x)[0].numpy(), atol=1e-5)


def test_a_shipped_classifier_serves_exactly_its_data(tiny_root, tmp_path, monkeypatch):
    """A classifier shipped under the data's content key is used without training; other data trains its own."""
    import dataclasses
    import shutil

    ds = vdata.load("fashion-mnist", tiny_root)
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache1"))
    model, info = classifier.reference_classifier("fashion-mnist", tiny_root, epochs=2, ds=ds)
    trained = next((tmp_path / "cache1" / "classifiers").iterdir())
    ship = tmp_path / "shipped"
    ship.mkdir()
    name = f"fashion-mnist-{classifier.content_key(ds)}-e2-v{classifier.VERSION}.safetensors"
    shutil.copy(trained, ship / name)
    monkeypatch.setattr(classifier, "SHIPPED", ship)
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache2"))  # a newcomer: nothing cached
    monkeypatch.setattr(classifier, "train_classifier", lambda *a, **k: pytest.fail("trained a shipped classifier"))
    again, info2 = classifier.reference_classifier("fashion-mnist", tiny_root, epochs=2, ds=ds)
    assert info2 == info
    # the content key follows the pixels, not paths or times: one changed pixel means other data
    x = ds.x_train.copy()
    x[0, 0, 0, 0] ^= 1
    other = dataclasses.replace(ds, x_train=x)
    assert classifier.content_key(other) != classifier.content_key(ds)
    with pytest.raises(pytest.fail.Exception, match="trained a shipped classifier"):
        classifier.reference_classifier("fashion-mnist", tiny_root, epochs=2, ds=other)


def test_the_shipped_classifiers_load():
    """The files in the package are whole networks with their recorded accuracy (weights only: safetensors)."""
    from vaelab.core.store import load_tree

    files = sorted(classifier.SHIPPED.glob("*.safetensors"))
    assert {f.name.split("-")[0] for f in files} == {"fashion", "cifar10"}
    for f in files:
        blob = load_tree(f)
        channels = 1 if f.name.startswith("fashion") else 3
        model = classifier.SmallCNN(channels, widths=tuple(blob["info"]["widths"]))
        model.load_state_dict(blob["model"])
        assert blob["info"]["test_accuracy"] > (0.9 if channels == 1 else 0.75)


def test_generation_scores(tiny_root, tmp_path, monkeypatch):
    quick_classifier(monkeypatch)
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(latent_dim=3, epochs=2), tmp_path / "r", dataset=ds)
    s = scoring.generation_scores(tmp_path / "r", tiny_root, n=50)
    for sampler in ("prior", "gmm"):
        assert s[f"fd_{sampler}"] > 0 and sum(s[f"class_histogram_{sampler}"]) == pytest.approx(1.0)
        assert all(h * 50 == pytest.approx(round(h * 50)) for h in s[f"class_histogram_{sampler}"])  # counts of 50
    # 50 samples over 10 classes: 5 per class, so the accuracy is a count of 50
    assert s["conditional_accuracy"] * 50 == pytest.approx(round(s["conditional_accuracy"] * 50))
    _, info = classifier.reference_classifier("fashion-mnist", tiny_root, ds=ds)
    assert s["classifier_test_accuracy"] == info["test_accuracy"]


def test_explore_writes_generation_scores_into_eval_json(tiny_root, tmp_path, monkeypatch, capsys):
    import json

    from vaelab.app.cli import main
    from vaelab.evaluation.evaluate import evaluate

    quick_classifier(monkeypatch)
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(latent_dim=3, epochs=2), tmp_path / "r", dataset=ds)
    evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2)
    assert main(["explore", str(tmp_path / "r"), "--data-dir", str(tiny_root), "--samples", "40"]) == 0
    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert {"fd_prior", "fd_gmm", "conditional_accuracy", "class_histogram_gmm", "neg_elbo"} <= set(ev)
    assert "class histogram of samples (gmm)" in capsys.readouterr().out


def test_score_run_merges_into_eval_json_and_reuses(tiny_root, tmp_path, monkeypatch):
    import json

    from vaelab.evaluation.evaluate import evaluate

    quick_classifier(monkeypatch)
    ds = vdata.load("fashion-mnist", tiny_root)
    train(tiny_config(latent_dim=3, epochs=1), tmp_path / "r", dataset=ds)
    evaluate(tmp_path / "r", data_dir=tiny_root, iwae_samples=2)
    first = scoring.score_run(tmp_path / "r", tiny_root, n=30)
    ev = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert ev["fd_gmm"] == first["fd_gmm"] and "neg_elbo" in ev
    monkeypatch.setattr(scoring, "generation_scores", lambda *a, **k: pytest.fail("recomputed stored scores"))
    assert scoring.score_run(tmp_path / "r", tiny_root, n=30) == first
    with pytest.raises(pytest.fail.Exception):
        scoring.score_run(tmp_path / "r", tiny_root, n=40)  # another sample count is another measurement


def test_random_crop_translates_each_image():
    import torch

    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = classifier.random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # the square stays inside
    corners = {tuple(torch.nonzero(o[0])[0].tolist()) for o in out}
    assert len(corners) > 10 and all(1 <= r <= 5 and 1 <= c <= 5 for r, c in corners)  # shifts in [-2, 2]

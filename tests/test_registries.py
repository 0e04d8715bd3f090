"""A new objective and a new metric are one registry entry each: both reach eval.json, results.csv, `vaelab study
status` and the report with no other change."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from vaelab import study
from vaelab.app.cli import main
from vaelab.app.commands import report
from vaelab.evaluation import metrics
from vaelab.models.losses import OBJECTIVES, Objective, beta_elbo


def elbo_plus_l1(terms, beta, cfg=None, progress=0.0):
    """The beta-ELBO plus a small L1 penalty on the posterior means."""
    return beta_elbo(terms, beta) + 1e-3 * terms["mu"].abs().sum(1).mean()


def mean_pixel(model, x, y, terms):
    """The mean intensity of each image's reconstruction (likelihood mean)."""
    return model.likelihood.mean(terms["params"]).flatten(1).mean(1)


@pytest.mark.slow
def test_an_objective_and_a_metric_added_by_registration_reach_every_output(tiny_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(OBJECTIVES, "elbo_l1", Objective(elbo_plus_l1))
    monkeypatch.setitem(
        metrics.METRICS, "mean_pixel", metrics.Metric("mean_pixel", "intensity", None, per_image=mean_pixel)
    )
    spec = study.parse_spec(
        {
            "name": "reg",
            "base": {
                "epochs": 1,
                "train_size": 60,
                "val_size": 20,
                "test_size": 20,
                "iwae_samples": 2,
                "latent_dim": 2,
                "objective": "elbo_l1",
            },
            "grid": {"seed": [0, 1]},
        }
    )
    out = tmp_path / "S"
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 2}
    ev = json.loads((out / "runs" / spec.cells[0].run_id / "eval.json").read_text())
    assert 0.0 < ev["mean_pixel"] < 1.0 and torch.isfinite(torch.tensor(ev["neg_elbo"]))
    df = pd.read_csv(out / "results.csv")
    assert df["mean_pixel"].between(0, 1).all()
    assert json.loads((out / "runs" / spec.cells[0].run_id / "config.json").read_text())["objective"] == "elbo_l1"
    assert main(["study", "status", str(out)]) == 0
    assert "mean_pixel" in capsys.readouterr().out
    report(out, data_dir=tiny_root, classifier=False)
    md = (out / "report" / "summary.md").read_text()
    assert "mean_pixel (intensity)" in md.split("## Latent dimensionality")[1]  # its unit, from its entry
    assert "| neg_elbo (nats ↓) |" in md


def test_a_metric_without_an_identifier_name_is_refused():
    import pytest

    from vaelab import VaelabError

    with pytest.raises(VaelabError, match="identifier"):
        metrics.register(metrics.Metric("mean pixel"))

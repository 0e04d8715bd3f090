"""Config: frozen, validated, unknown keys and impossible values raise with a clear message."""

from __future__ import annotations

import dataclasses

import pytest

from vaelab import VaelabError
from vaelab.runs.config import TrainConfig, from_dict
from vaelab.runs.presets import PRESETS, preset


def test_frozen_and_replace():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 2.0  # type: ignore[misc]
    assert cfg.replace(beta=4).beta == 4.0 and cfg.beta == 1.0


def test_round_trip_through_dict():
    cfg = TrainConfig(latent_dim=7, beta=0.5, cosine=True)
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "bad,msg",
    [
        ({"latnt_dim": 3}, "did you mean 'latent_dim'"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
        ({"beta": -1}, "beta must be >= 0"),
        ({"dataset": "kmnist"}, "unknown dataset 'kmnist'"),
        ({"likelihood": "poisson"}, "unknown likelihood"),
        ({"latent_dim": 2.5}, "must be int"),
        ({"cosine": "yes"}, "must be bool"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"net": "conv", "width": 32}, "the conv network has a fixed size"),
        ({"model": "hierarchical", "prior": "vamp"}, "its own per-group posteriors and priors"),
        ({"model": "hierarchical", "objective": "beta_tcvae"}, "supports the elbo, free_bits and capacity"),
        ({"time_budget": "ten minutes"}, "not a duration"),
        ({"time_budget": -5}, "time_budget must be between"),
        ({"ema": 1.0}, r"ema must be in \[0, 1\)"),
        ({"likelihood_components": 0}, "likelihood_components must be in 1..100"),
    ],
)
def test_bad_values_raise(bad, msg):
    with pytest.raises(VaelabError, match=msg):
        from_dict(bad)


def test_presets_are_valid_and_unknown_preset_raises():
    for p in PRESETS.values():
        assert from_dict(p.to_dict()) == p
    with pytest.raises(VaelabError, match="unknown preset"):
        preset("nope")


@pytest.mark.parametrize("text,seconds", [(90, 90.0), ("90", 90.0), ("45s", 45.0), ("30m", 1800.0), ("1.5h", 5400.0)])
def test_time_budgets_parse_with_units(text, seconds):
    assert from_dict({"time_budget": text}).time_budget == seconds


def test_a_config_made_directly_is_validated_and_coerced():
    """The notebook and Python users build TrainConfig(...) themselves: the same checks as from_dict apply."""
    with pytest.raises(VaelabError, match="latent_dim must be >= 1"):
        TrainConfig(latent_dim=0)
    with pytest.raises(VaelabError, match="unknown net"):
        dataclasses.replace(TrainConfig(), net="transformer")
    assert isinstance(TrainConfig(beta=2).beta, float) and TrainConfig(time_budget="2m").time_budget == 120.0


def test_model_and_net_are_apart_and_0_1_configs_with_arch_still_read():
    from vaelab.study import parse_spec
    from vaelab.study.results import arch_label

    assert from_dict({"arch": "resnet"}).net == "resnet" and from_dict({"arch": "resnet"}).model == "vae"
    hvae = from_dict({"arch": "hierarchical", "likelihood": "dmol"})
    assert hvae.model == "hierarchical" and hvae.net == "conv"
    assert arch_label(hvae.to_dict()) == "hierarchical" and arch_label({"arch": "conv4"}) == "conv4"
    with pytest.raises(VaelabError, match="has its own network"):
        TrainConfig(model="hierarchical", net="resnet", likelihood="dmol")
    spec = parse_spec({"name": "old", "base": {"arch": "mlp"}, "grid": {"seed": [0]}})
    assert spec.cells[0].config.net == "mlp"
    with pytest.raises(VaelabError, match="'arch' is now two: model"):
        parse_spec({"name": "old", "grid": {"arch": ["conv", "hierarchical"]}})


def test_a_count_and_a_time_budget_do_not_combine_and_presets_use_counts():
    with pytest.raises(VaelabError, match="give one budget"):
        TrainConfig(budget="10steps", time_budget=5.0)
    assert PRESETS["cifar10-hvae-cpu"].replace(budget="", time_budget=60.0).time_budget == 60.0
    assert all(not p.time_budget for p in PRESETS.values())  # every training preset trains the same on any machine

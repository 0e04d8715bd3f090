"""Config: frozen, validated, unknown keys and impossible values raise with a clear message."""

from __future__ import annotations

import dataclasses

import pytest

from vaelab import VaelabError
from vaelab.config import PRESETS, TrainConfig, from_dict, preset


def test_frozen_and_replace():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.beta = 2.0  # type: ignore[misc]
    assert cfg.replace(beta=4).beta == 4.0 and cfg.beta == 1.0


def test_round_trip_through_dict():
    cfg = TrainConfig(latent_dim=7, beta=0.5, cosine=True)
    assert from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad,msg", [
    ({"latnt_dim": 3}, "did you mean 'latent_dim'"),
    ({"latent_dim": 0}, "latent_dim must be >= 1"),
    ({"beta": -1}, "beta must be >= 0"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"likelihood": "poisson"}, "unknown likelihood"),
    ({"latent_dim": 2.5}, "must be int"),
    ({"cosine": "yes"}, "must be bool"),
    ({"epochs": 0}, "epochs must be >= 1"),
])
def test_bad_values_raise(bad, msg):
    with pytest.raises(VaelabError, match=msg):
        from_dict(bad)


def test_presets_are_valid_and_unknown_preset_raises():
    for p in PRESETS.values():
        assert from_dict(p.to_dict()) == p
    with pytest.raises(VaelabError, match="unknown preset"):
        preset("nope")

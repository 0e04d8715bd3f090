"""A Run knows its directory's layout and loads its model once, until the checkpoint changes."""

from __future__ import annotations

import json
import os

import pytest

from conftest import tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.runs.run import Run
from vaelab.training.loop import train


def test_run_layout_and_model_loaded_once(tiny_root, tmp_path, monkeypatch):

    ds = vdata.load("fashion-mnist", tiny_root)
    cfg = tiny_config(epochs=1)
    train(cfg, tmp_path / "r", dataset=ds)
    run = Run(tmp_path / "r")
    assert run.config == cfg and [m["epoch"] for m in run.metrics] == [1] and run.eval() is None
    assert (
        run.checkpoint_path.name == "checkpoint.safetensors"
        and run.eval_path("cifar10-lossless").name == "eval-cifar10-lossless.json"
    )
    calls = []
    import vaelab.runs.run as vrun

    real = vrun.load_model
    monkeypatch.setattr(vrun, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = Run(tmp_path / "r").model
    assert Run(tmp_path / "r").model is first and run.classes == list(ds.classes) and len(calls) == 1
    ck = run.checkpoint_path  # a rewritten checkpoint (here: a newer mtime) is loaded again
    os.utime(ck, ns=(ck.stat().st_atime_ns, ck.stat().st_mtime_ns + 10**9))
    assert Run(tmp_path / "r").model is not first and len(calls) == 2
    (tmp_path / "r" / "eval.json").write_text(json.dumps({"neg_elbo": 1.0}))
    assert run.eval() == {"neg_elbo": 1.0}


def test_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(VaelabError, match="not a vaelab run directory"):
        Run(tmp_path)

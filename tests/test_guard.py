"""The non-finite guard on the device (training.guard): the same run as the host's guard when nothing is skipped,
the same skips, counts, rewind and message when steps are non-finite — tested on the CPU by reading it every 4 steps
instead of every step."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from test_train import poison_steps
from vaelab import data as vdata
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.training import guard
from vaelab.training.epochs import TrainingDiverged
from vaelab.training.guard import DeviceGuard
from vaelab.training.loop import train


@pytest.fixture
def ds(tiny_root):
    return vdata.load("fashion-mnist", tiny_root)


@pytest.fixture
def on_device(monkeypatch):
    """The guard kept on the device and read every 4 steps, as on a GPU (every step by default on a CPU)."""
    monkeypatch.setitem(guard.HOST_READ_EVERY, "cpu", 4)


def test_the_device_guard_counts_as_the_host_does():
    g = DeviceGuard(torch.device("cpu"), in_row=1, every=3)
    t, f = torch.tensor(True), torch.tensor(False)
    applied = [g.step(finite, large, 10) for finite, large in [(f, f), (t, f), (t, t)]]
    assert [bool(a) for a in applied] == [False, True, False] and g.due()
    s = g.read()  # the run in a row carried in (1) grew to 2, then a finite step ended it
    assert (s.bad, s.large, s.seen, s.in_row, s.worst) == (1, 1, 10, 0, 2) and not g.due()
    g.step(f, f, 10)
    assert g.read().worst == 1  # the longest run since the last read


def test_nothing_skipped_is_the_same_run_bit_for_bit(ds, tmp_path, on_device):
    """Without a non-finite step the device's guard changes nothing: weights, optimiser state and history match
    the host's guard exactly (clipping by min(1, clip / norm) multiplies by exactly 1 below the limit)."""
    cfg = tiny_config(epochs=2, grad_clip=5.0)
    on = train(cfg, tmp_path / "device", dataset=ds)
    guard.HOST_READ_EVERY["cpu"] = 1
    off = train(cfg, tmp_path / "host", dataset=ds)
    assert {k: v for k, v in on.items() if k not in ("seconds", "images_per_s")} == {
        k: v for k, v in off.items() if k not in ("seconds", "images_per_s")
    }
    a, b = load_checkpoint(tmp_path / "device"), load_checkpoint(tmp_path / "host")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_skipped_steps_are_counted_alike_with_an_ema(ds, tmp_path, on_device, monkeypatch):
    """Isolated non-finite steps: the same skips and step count as the host's guard, and finite weights. (Between two
    reads the schedules — KL warm-up, the EMA's warm-up — count the skipped steps too, so the weights differ slightly
    from the host's guard's when steps were skipped: docs/benchmarks.md.)"""
    poison_steps(monkeypatch, lambda n: n % 3 == 0)
    cfg = tiny_config(epochs=1, ema=0.9, max_skip_share=0.5)
    on = train(cfg, tmp_path / "device", dataset=ds)
    guard.HOST_READ_EVERY["cpu"] = 1
    off = train(cfg, tmp_path / "host", dataset=ds)
    assert on["skipped_steps"] == off["skipped_steps"] == 2 and on["step"] == off["step"] == 5
    ckpt = load_checkpoint(tmp_path / "device")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert ckpt["bad_steps"] == 2


def test_a_run_of_non_finite_steps_stops_with_the_same_message_and_keeps_the_checkpoint(
    ds, tmp_path, on_device, monkeypatch
):
    cfg = tiny_config(epochs=3, max_bad_steps=3)
    poison_steps(monkeypatch, lambda n: n > 7)  # epoch 1 has 7 steps; every later step fails
    with pytest.raises(TrainingDiverged, match="in epoch 2: 3 non-finite steps in a row") as e:
        train(cfg, tmp_path / "r", dataset=ds)
    assert "last good checkpoint is kept" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "r")  # the last good state: epoch 1, finite, the one a resume starts from
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_the_run_in_a_row_spans_reads_and_epochs(ds, tmp_path, on_device, monkeypatch):
    cfg = tiny_config(epochs=6, train_size=96, batch_size=32, max_bad_steps=3, max_skip_share=1.0)  # 3 steps/epoch
    poison_steps(monkeypatch, lambda n: n >= 6)  # the last step of epoch 2, then every step of epoch 3
    with pytest.raises(TrainingDiverged, match="in epoch 3: 3 non-finite steps in a row"):
        train(cfg, tmp_path / "r", dataset=ds)
    assert load_checkpoint(tmp_path / "r")["epoch"] == 2


def test_a_step_budget_counts_applied_updates(ds, tmp_path, on_device, monkeypatch):
    poison_steps(monkeypatch, lambda n: n in (2, 3))
    last = train(tiny_config(epochs=5, budget="9steps", max_skip_share=0.5), tmp_path / "r", dataset=ds)
    assert last["step"] == 9 and sum(r["skipped_steps"] for r in load_checkpoint(tmp_path / "r")["history"]) == 2

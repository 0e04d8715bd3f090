"""Runs trained together (stacked weights, vmap) give the numbers of the same runs trained one by one."""

from __future__ import annotations

import pytest

from conftest import tiny_config
from vaelab import VaelabError
from vaelab.runs.checkpoint import load_checkpoint
from vaelab.training import multirun
from vaelab.training.loop import train

# Tolerance: the stacked step computes the same sums in another order (batched matmuls and convolutions, Adam's
# update written out instead of the fused kernel), so gradients differ by float32 rounding. Adam's first steps move
# every weight by about +-lr whatever its gradient's size, so a near-zero gradient whose sign rounding flips moves a
# weight by 2 lr: single weights may differ by ~1e-3 while the functions agree. Hence the measures: each tensor's
# relative L2 distance (measured 2.8e-3 after 8 steps; another seed and beta: >= 0.4) and the per-epoch ELBOs
# (measured <= 2e-5 relative; another seed: >= 1e-2).
RTOL_W, RTOL_ELBO = 2e-2, 5e-4


def _assert_same_weights(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        rel = ((got[k] - want[k]).norm() / want[k].norm().clamp(min=1e-12)).item()
        assert rel <= RTOL_W, (k, rel)


def _cfgs(**kw):
    base = dict(train_size=64, val_size=40, batch_size=16, epochs=2, latent_dim=3, **kw)
    return [
        tiny_config(seed=0, beta=1.0, **base),
        tiny_config(seed=1, beta=1.0, **base),
        tiny_config(seed=0, beta=4.0, **base),
    ]


def _weights(run):
    return load_checkpoint(run)["model"]


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized_logistic"])
def test_together_equals_one_by_one(tiny_root, tmp_path, likelihood):
    cfgs = _cfgs(likelihood=likelihood)
    alone = [tmp_path / f"alone{i}" for i in range(3)]
    for c, o in zip(cfgs, alone):
        train(c, o, data_dir=str(tiny_root), progress=False)
    together = [tmp_path / f"together{i}" for i in range(3)]
    multirun.train_together(cfgs, together, data_dir=str(tiny_root))
    for a, t in zip(alone, together):
        _assert_same_weights(_weights(t), _weights(a))
        ha, ht = load_checkpoint(a)["history"], load_checkpoint(t)["history"]
        for ra, rt in zip(ha, ht):
            assert rt["step"] == ra["step"] and rt["beta"] == ra["beta"]
            assert rt["val_neg_elbo"] == pytest.approx(ra["val_neg_elbo"], rel=RTOL_ELBO)
            assert rt["train_loss"] == pytest.approx(ra["train_loss"], rel=RTOL_ELBO)
    # the runs really differ from each other (seed and beta reach the stacked step), far beyond the tolerances
    with pytest.raises(AssertionError):
        _assert_same_weights(_weights(together[1]), _weights(alone[0]))
    with pytest.raises(AssertionError):
        _assert_same_weights(_weights(together[2]), _weights(alone[0]))
    elbo = [load_checkpoint(t)["history"][-1]["val_neg_elbo"] for t in together]
    assert abs(elbo[1] - elbo[0]) > 2 * RTOL_ELBO * elbo[0]


def test_an_interrupted_group_resumes_run_by_run_with_train(tiny_root, tmp_path, monkeypatch):
    """The checkpoints are train's: after epoch 1 of 2, `train --resume` finishes each run as if trained alone."""
    cfgs = _cfgs(likelihood="bernoulli", cosine=True, warmup_epochs=1.0)
    outs = [tmp_path / f"t{i}" for i in range(3)]
    real_end = multirun._end_epoch
    calls = []

    def end_then_stop(r, r_i, epoch, *rest):
        real_end(r, r_i, epoch, *rest)
        calls.append(r_i)
        if len(calls) == len(cfgs):
            raise KeyboardInterrupt  # the machine went away after every run saved epoch 1

    monkeypatch.setattr(multirun, "_end_epoch", end_then_stop)
    with pytest.raises(KeyboardInterrupt):
        multirun.train_together(cfgs, outs, data_dir=str(tiny_root))
    for c, o in zip(cfgs, outs):
        assert load_checkpoint(o)["epoch"] == 1
        train(c, o, data_dir=str(tiny_root), resume=True, progress=False)
        ref = tmp_path / f"ref{c.seed}-{c.beta}"
        train(c, ref, data_dir=str(tiny_root), progress=False)
        _assert_same_weights(_weights(o), _weights(ref))
        assert load_checkpoint(o)["history"][-1]["val_neg_elbo"] == pytest.approx(
            load_checkpoint(ref)["history"][-1]["val_neg_elbo"], rel=RTOL_ELBO
        )


def test_what_cannot_train_together_is_refused(tiny_root, tmp_path):
    a, b = tiny_config(seed=0), tiny_config(seed=1, latent_dim=8)
    with pytest.raises(VaelabError, match="differ in seed and beta alone"):
        multirun.train_together([a, b], [tmp_path / "a", tmp_path / "b"], data_dir=str(tiny_root))
    with pytest.raises(VaelabError, match="objective beta_tcvae"):
        multirun.train_together([tiny_config(objective="beta_tcvae")] * 2, [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(VaelabError, match="share an output directory"):
        multirun.train_together([a, a.replace(seed=3)], [tmp_path / "a", tmp_path / "a"], data_dir=str(tiny_root))
    train(a, tmp_path / "held", data_dir=str(tiny_root), progress=False)
    with pytest.raises(VaelabError, match="already holds a run"):
        multirun.train_together([a, a.replace(seed=3)], [tmp_path / "held", tmp_path / "c"], data_dir=str(tiny_root))
    cfgs = [tiny_config(seed=s, beta=b) for s in (0, 1) for b in (1.0, 2.0)] + [
        tiny_config(latent_dim=8),
        tiny_config(ema=0.9, seed=5),
    ]
    assert multirun.groups(cfgs) == [[0, 1, 2, 3]]


def test_study_together_trains_groups_then_evaluates_every_cell(tiny_root, tmp_path, capsys):
    from vaelab import study
    from vaelab.app.cli import main

    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "g"\n[base]\ndataset = "fashion-mnist"\nepochs = 1\ntrain_size = 64\nval_size = 40\n'
        "test_size = 20\niwae_samples = 2\nbatch_size = 16\nlatent_dim = 3\n"
        "[grid]\nbeta = [1.0, 4.0]\nseed = [0, 1]\n"
    )
    assert main(["study", str(spec), "--out", str(tmp_path / "S"), "--together", "--data-dir", str(tiny_root)]) == 0
    runs = sorted((tmp_path / "S" / "runs").iterdir())
    assert len(runs) == 4 and all((r / "eval.json").is_file() for r in runs)
    assert all(load_checkpoint(r)["history"][-1]["trained_with"] == "multirun" for r in runs)
    alone = tmp_path / "alone"
    study.run(study.load_spec(spec), alone, data_dir=str(tiny_root))
    for r in runs:
        a = load_checkpoint(alone / "runs" / r.name)
        assert "trained_with" not in a["history"][-1]
        assert load_checkpoint(r)["history"][-1]["val_neg_elbo"] == pytest.approx(
            a["history"][-1]["val_neg_elbo"], rel=RTOL_ELBO
        )

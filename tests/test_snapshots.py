"""Models kept along training (TrainConfig.snapshots): kept at the right step, resumable, evaluated, and the
findings traced along them."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.evaluation.evaluate import evaluate, evaluate_snapshots
from vaelab.runs.checkpoint import load_checkpoint, load_snapshot
from vaelab.runs.config import TrainConfig, snapshot_fractions
from vaelab.runs.run import Run
from vaelab.study import verdicts as vf
from vaelab.training.epochs import ema_decay
from vaelab.training.loop import train


@pytest.fixture
def ds(tiny_root):
    return vdata.load("fashion-mnist", tiny_root)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fractions_are_parsed_sorted_and_spelled_once():
    assert snapshot_fractions("0.5, 0.25,0.5") == (0.25, 0.5)
    assert TrainConfig(snapshots="0.5,0.25").snapshots == "0.25,0.5"
    for bad in ("0.5,x", "1", "0", "-0.2", "0.5,1.5"):
        with pytest.raises(VaelabError, match="snapshots"):
            TrainConfig(snapshots=bad)


def test_the_snapshot_at_half_is_the_model_of_a_run_with_half_the_budget(ds, tmp_path):
    """A constant learning rate and no EMA: the first 7 of 14 steps are the same steps as a 7-step run's (same
    initial weights, batches and noise), so the snapshot at 1/2 must equal that run's final weights exactly."""
    cfg = tiny_config(epochs=100, budget="14steps", snapshots="0.25,0.5")
    train(cfg, tmp_path / "long", dataset=ds)
    train(tiny_config(epochs=100, budget="7steps"), tmp_path / "half", dataset=ds)
    _, _, snap = load_snapshot(Run(tmp_path / "long").snapshot_path(0.5))
    assert snap["step"] == 7 and snap["fraction"] == 0.5
    assert _same(snap["model"], load_checkpoint(tmp_path / "half")["model"])
    _, _, quarter = load_snapshot(Run(tmp_path / "long").snapshot_path(0.25))
    assert quarter["step"] == 4  # the first step at or past 14 / 4
    assert not _same(quarter["model"], snap["model"])


def test_an_ema_runs_snapshot_holds_the_ema_weights(ds, tmp_path):
    cfg = tiny_config(epochs=100, budget="14steps", snapshots="0.5", ema=0.9)
    train(cfg, tmp_path / "long", dataset=ds)
    train(cfg.replace(budget="7steps", snapshots=""), tmp_path / "half", dataset=ds)
    _, _, snap = load_snapshot(Run(tmp_path / "long").snapshot_path(0.5))
    half = load_checkpoint(tmp_path / "half")
    assert _same(snap["model"], half["model"]) and not _same(snap["model"], half["train_model"])


def test_the_ema_is_warmed_up():
    assert ema_decay(0.999, 0) == pytest.approx(0.1)  # the first step nearly copies the weights
    assert ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 10**6) == 0.999


class Interrupt(Exception):
    pass


def test_an_interrupted_run_keeps_the_same_snapshots(ds, tmp_path):
    cfg = tiny_config(epochs=100, budget="21steps", snapshots="0.25,0.5", ema=0.9, cosine=True)
    train(cfg, tmp_path / "full", dataset=ds)

    def stop(epoch, row):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=ds, on_epoch_end=stop)
    cut = Run(tmp_path / "cut")
    assert cut.snapshot_path(0.25).exists() and not cut.snapshot_path(0.5).exists()  # steps 6 and 11 of 7 a epoch
    train(cfg, tmp_path / "cut", dataset=ds, resume=True)
    for f in (0.25, 0.5):
        a = load_snapshot(Run(tmp_path / "full").snapshot_path(f))[2]["model"]
        b = load_snapshot(cut.snapshot_path(f))[2]["model"]
        assert _same(a, b)


def test_a_snapshot_lost_after_its_moment_is_not_made_up_from_later_weights(ds, tmp_path):
    cfg = tiny_config(epochs=100, budget="21steps", snapshots="0.25,0.5")

    def stop(epoch, row):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "r", dataset=ds, on_epoch_end=stop)
    Run(tmp_path / "r").snapshot_path(0.5).unlink()  # deleted by hand once the checkpoint at step 14 was written
    train(cfg, tmp_path / "r", dataset=ds, resume=True)
    assert not Run(tmp_path / "r").snapshot_path(0.5).exists()


def test_snapshots_are_evaluated_at_the_runs_k_into_their_own_files(ds, tmp_path):
    run = tmp_path / "r"
    train(tiny_config(epochs=100, budget="14steps", snapshots="0.5", iwae_samples=8), run, dataset=ds)
    assert evaluate_snapshots(run, dataset=ds) == [0.5]
    ev = Run(run).snapshot_eval(0.5)
    assert ev["iwae_samples"] == 8 and ev["step"] == 7  # the run's own K: fractions compare the same quantity
    assert ev["weights"] == "last at 0.5 of the budget"
    assert not Run(run).eval_path().exists()  # the run's own eval.json is untouched
    assert evaluate_snapshots(run, dataset=ds) == []  # done once
    stale = {**ev, "iwae_samples": 5}  # scored at another K (vaelab < 0.3): scored again at the run's
    Run(run).snapshot_eval_path(0.5).write_text(__import__("json").dumps(stale))
    assert evaluate_snapshots(run, dataset=ds) == [0.5] and Run(run).snapshot_eval(0.5)["iwae_samples"] == 8
    with pytest.raises(VaelabError, match="does not combine"):
        evaluate(run, dataset=ds, snapshot=0.5, raw=True)


def test_cli_evaluates_a_snapshot_and_refuses_a_missing_one(tiny_root, tmp_path, capsys):
    run = tmp_path / "r"
    base = ["--dataset", "fashion-mnist", "--latent-dim", "4", "--batch-size", "32", "--val-size", "40"]
    args = ["train", *base, "--epochs", "100", "--budget", "14steps", "--snapshots", "0.5", "--iwae-samples", "3"]
    assert main([*args, "--out", str(run), "--data-dir", str(tiny_root)]) == 0
    assert "snapshot at 0.5:" in capsys.readouterr().out
    assert Run(run).snapshot_eval(0.5) is not None and Run(run).eval() is not None
    assert main(["evaluate", str(run), "--snapshot", "0.75", "--data-dir", str(tiny_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keeps no snapshot at 0.75 (it keeps 0.5)" in err[0]


# ---------------------------------------------------------------- findings traced along training


def _f(claim: str, verdict: str) -> vf.Finding:
    return vf.Finding(claim, "evidence", verdict)


@pytest.mark.parametrize(
    "quarter, half, final, says",
    [
        (vf.HOLDS, vf.HOLDS, vf.HOLDS, "stable since ¼"),
        (vf.INCONCLUSIVE, vf.HOLDS, vf.HOLDS, "stable since ½"),
        (vf.HOLDS, vf.INCONCLUSIVE, vf.HOLDS, "changed at 1, was 'inconclusive' at ½"),
        (vf.HOLDS, vf.HOLDS, vf.FAILS, "changed at 1, was 'holds' at ½"),
    ],
)
def test_stability_says_since_when_the_verdict_holds(quarter, half, final, says):
    traced = vf.along_training([_f("c", final)], {0.5: [_f("c", half)], 0.25: [_f("c", quarter)]})
    assert traced[0].along == ((0.25, quarter), (0.5, half), (1.0, final))
    assert vf.stability(traced[0]) == says
    assert vf.along_text(traced[0]).startswith(f"¼: {quarter} · ½: {half} · 1: {final}")


def test_a_claim_missing_at_a_fraction_is_not_measured_there_and_none_without_snapshots():
    traced = vf.along_training([_f("c", vf.HOLDS)], {0.5: [_f("other", vf.HOLDS)]})
    assert traced[0].along == ((0.5, vf.NOT_MEASURED), (1.0, vf.HOLDS))
    assert vf.stability(traced[0]) == "measured at the end only"
    traced = vf.along_training([_f("c", vf.HOLDS)], {0.5: [_f("c", vf.HOLDS)], 0.25: [_f("other", vf.HOLDS)]})
    assert vf.stability(traced[0]) == "stable since ½"
    assert vf.along_training([_f("c", vf.HOLDS)], {}) == [_f("c", vf.HOLDS)]
    assert vf.stability(_f("c", vf.HOLDS)) == "" and vf.along_text(_f("c", vf.HOLDS)) == ""


SNAP_TOML = """\
name = "traced"
[base]
dataset = "fashion-mnist"
epochs = 100
budget = "8steps"
snapshots = "0.5"
train_size = 100
val_size = 40
test_size = 20
iwae_samples = 2
batch_size = 25
[grid]
latent_dim = [2, 8]
seed = [0, 1, 2]
"""


@pytest.mark.slow
def test_a_study_traces_its_findings_along_training(tiny_root, tmp_path, capsys):
    import pandas as pd

    from vaelab import study

    (tmp_path / "s.toml").write_text(SNAP_TOML)
    out = tmp_path / "S"
    assert study.run(study.load_spec(tmp_path / "s.toml"), out, data_dir=str(tiny_root)) == {"done": 6}
    along = pd.read_csv(out / "results-fractions.csv")
    assert sorted(along["fraction"].unique()) == [0.5, 1.0] and len(along) == 12
    final = pd.read_csv(out / "results.csv")
    half = along[along["fraction"] == 0.5].set_index("run_id")
    assert (along[along["fraction"] == 1.0]["neg_elbo"].to_numpy() == final["neg_elbo"].to_numpy()).all()
    for r in final.itertuples():  # each half-budget row is that run's snapshot's evaluation
        assert half.loc[r.run_id, "neg_elbo"] == pytest.approx(
            Run(out / "runs" / r.run_id).snapshot_eval(0.5)["neg_elbo"]
        )
    testable, _ = study.study_findings(final, along)
    assert testable and all(f.along and f.along[-1] == (1.0, f.verdict) for f in testable)
    assert main(["findings", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(along training: ½: ") == len(testable)


def test_a_run_stopped_early_counts_its_model_at_later_fractions_and_one_without_a_snapshot_is_marked(
    tiny_root, tmp_path
):
    from vaelab import study

    (tmp_path / "s.toml").write_text(SNAP_TOML.replace("seed = [0, 1, 2]", "seed = [0]"))
    out = tmp_path / "S"
    study.run(study.load_spec(tmp_path / "s.toml"), out, data_dir=str(tiny_root))
    run = Run(out / "runs" / "latent_dim-2__seed-0")
    run.snapshot_eval_path(0.5).unlink()
    run.snapshot_path(0.5).unlink()
    stopped = Run(out / "runs" / "latent_dim-8__seed-0")  # as if patience had ended it before half its budget
    stopped.snapshot_eval_path(0.5).unlink()
    stopped.snapshot_path(0.5).unlink()
    lines = stopped.metrics_path.read_text().splitlines()
    last = json.loads(lines[-1]) | {"stopped_early": True}
    stopped.metrics_path.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    rows = study.collect(out, 0.5).set_index("run_id")
    assert rows.loc["latent_dim-2__seed-0", "status"] == "no snapshot"
    assert rows.loc["latent_dim-8__seed-0", "status"] == "done"
    assert rows.loc["latent_dim-8__seed-0", "neg_elbo"] == stopped.eval()["neg_elbo"]


def test_a_finding_untestable_at_a_fraction_is_not_measured_there():
    import pandas as pd

    from vaelab import study

    rows = [
        dict(
            run_id=f"r{s}{f}",
            status="done",
            dataset="cifar10",
            latent_dim=8,
            beta=1.0,
            seed=s,
            fraction=f,
            kl=1.0,
            recon=10.0 + s,
            neg_elbo=11.0 + s,
            fd_prior=None if f < 1 else 5.0 + s,
            fd_gmm=None if f < 1 else 4.0,
            conditional_accuracy=None,
        )
        for s in range(3)
        for f in (0.5, 1.0)
    ]
    along = pd.DataFrame(rows)
    final = along[along["fraction"] == 1.0].drop(columns="fraction")
    testable, _ = study.study_findings(final, along)
    (mix,) = [f for f in testable if "mixture" in f.claim]
    assert mix.along == ((0.5, vf.NOT_MEASURED), (1.0, mix.verdict))
    assert vf.stability(mix) == "measured at the end only"
    # a family finding whose measurement is missing at ½ ("no fd prior measured") is not measured there either
    fam = pd.concat([along, along.assign(run_id=lambda d: d["run_id"] + "v", prior="vamp")]).assign(
        prior=lambda d: d["prior"].fillna("standard")
    )
    testable, _ = study.study_findings(fam[fam["fraction"] == 1.0].drop(columns="fraction"), fam)
    (vamp,) = [f for f in testable if "samples closer" in f.claim and "VampPrior" in f.claim]
    assert vamp.along[0] == (0.5, vf.NOT_MEASURED)


def test_snapshot_files_are_named_exactly_and_same_step_fractions_are_refused(tiny_root, tmp_path, capsys):
    from vaelab.runs.run import snapshot_name

    assert [snapshot_name(f) for f in (0.25, 0.5, 0.251, 1 / 3)] == ["0.25", "0.50", "0.251", repr(1 / 3)]
    base = ["train", "--dataset", "fashion-mnist", "--latent-dim", "4", "--val-size", "30", "--batch-size", "64"]
    base += ["--no-eval", "--epochs", "1000", "--data-dir", str(tiny_root)]
    out = tmp_path / "same"
    assert main([*base, "--budget", "400steps", "--snapshots", "0.251,0.252", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "both fall on step 101 of 400" in err[0] and not out.exists()
    out = tmp_path / "apart"
    assert main([*base, "--budget", "20steps", "--snapshots", "0.3,0.35", "--out", str(out)]) == 0
    a, b = (load_snapshot(Run(out).snapshot_path(f))[2] for f in (0.3, 0.35))
    assert (a["step"], b["step"]) == (6, 7) and not _same(a["model"], b["model"])
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["at-0.30.safetensors", "at-0.35.safetensors"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--snapshot", "0.35", "--data-dir", str(tiny_root)]) == 0
    assert (out / "snapshots" / "eval-at-0.35.json").is_file()
    assert main(["evaluate", str(out), "--snapshot", "0.34", "--data-dir", str(tiny_root)]) == 2
    assert "keeps no snapshot at 0.34 (it keeps 0.3, 0.35)" in capsys.readouterr().err


def test_fractions_compare_iwae_only_at_the_same_k_and_convergence_is_the_half_to_end_change():
    import math

    import pandas as pd

    from vaelab.study import results

    df = pd.DataFrame({"run_id": ["a", "b"], "iwae_samples": [20, 20], "iwae_nll": [1.0, 2.0], "neg_elbo": [99.0, 50]})
    rows = pd.DataFrame(
        {"run_id": ["a", "b"], "iwae_samples": [20, 5], "iwae_nll": [1.5, 2.5], "neg_elbo": [100.0, 50]}
    )
    out = results._same_k(rows, df)
    assert out["iwae_nll"].iloc[0] == 1.5 and math.isnan(out["iwae_nll"].iloc[1])  # K 5 vs 20: not compared
    assert results._same_k(rows.drop(columns="iwae_samples"), df)["iwae_nll"].isna().all()  # K unknown
    along = pd.concat([rows.assign(fraction=0.5), df.assign(fraction=1.0)])
    assert results.half_change(df, along).tolist() == pytest.approx([-0.01, 0.0])  # (end - half) / |half|
    assert results.half_change(df, None).isna().all()

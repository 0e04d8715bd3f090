"""Studies: grid expansion, spec validation with line numbers, resume after kill, failures, parallel and Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import count
from vaelab import VaelabError, study
from vaelab.app.cli import main
from vaelab.runs.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

TINY_TOML = """\
name = "tiny"
[base]            # fields every run shares
dataset = "fashion-mnist"
epochs = 1
train_size = 100
val_size = 40
test_size = 20
iwae_samples = 2
batch_size = 50
[grid]            # the product of these lists; one run per combination
latent_dim = [2, 8]
seed = [0]
"""


def write(tmp_path, text, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_grid_helpers():
    a, b = study.sweep("x", [1, 2]), study.sweep("y", ["u", "v"])
    assert study.product(a, b) == [{"x": 1, "y": "u"}, {"x": 1, "y": "v"}, {"x": 2, "y": "u"}, {"x": 2, "y": "v"}]
    assert study.zipit(a, b) == [{"x": 1, "y": "u"}, {"x": 2, "y": "v"}]
    assert study.chain(a, a, b) == [{"x": 1}, {"x": 2}, {"y": "u"}, {"y": "v"}]
    with pytest.raises(VaelabError, match="equal length"):
        study.zipit(a, study.sweep("y", [1, 2, 3]))


def test_spec_from_the_issue_expands_to_two_runs(tmp_path):
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    assert spec.name == "tiny"
    assert [c.run_id for c in spec.cells] == ["latent_dim-2__seed-0", "latent_dim-8__seed-0"]
    assert spec.cells[1].config.latent_dim == 8 and spec.cells[1].config.train_size == 100
    again = study.load_spec(write(tmp_path, TINY_TOML, "again.toml"))
    assert [c.run_id for c in again.cells] == [c.run_id for c in spec.cells]  # stable names


def test_a_written_study_json_reruns_as_it_stands_and_an_edited_one_is_refused(tmp_path):
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    recorded = {
        **spec.to_dict(),
        "cells": [{"run_id": c.run_id, "overrides": c.overrides, "config": c.config.to_dict()} for c in spec.cells],
    }
    path = tmp_path / "study.json"
    path.write_text(json.dumps(recorded, indent=1))
    again = study.load_spec(path)
    assert [(c.run_id, c.config) for c in again.cells] == [(c.run_id, c.config) for c in spec.cells]
    recorded["cells"][1]["config"]["latent_dim"] = 9
    path.write_text(json.dumps(recorded, indent=1))
    with pytest.raises(VaelabError, match="run latent_dim-8__seed-0 is not what 'cells' records"):
        study.load_spec(path)
    recorded["cells"] = recorded["cells"][:1] * 3
    path.write_text(json.dumps(recorded, indent=1))
    with pytest.raises(VaelabError, match="not what 'cells' records"):
        study.load_spec(path)


@pytest.mark.parametrize(
    "spec_json", sorted((ROOT / "docs" / "studies").glob("*/spec.json")), ids=lambda p: p.parent.name
)
def test_the_committed_studies_specs_rerun_as_they_stand_and_an_edit_is_refused(spec_json, tmp_path):
    ids = [c.run_id for c in study.load_spec(spec_json).cells]
    d = json.loads(spec_json.read_text())
    assert ids == [c["run_id"] for c in d["cells"]] and len(ids) >= 12  # every committed spec records its runs
    results = spec_json.parent / "results.csv"
    if results.is_file():  # the runs it records are the runs the study's table holds
        import pandas as pd

        assert set(ids) == set(pd.read_csv(results)["run_id"])
    edited = {**d, "base": {**d["base"], "iwae_samples": 5 if d["base"].get("iwae_samples") != 5 else 7}}
    (tmp_path / "spec.json").write_text(json.dumps(edited))
    with pytest.raises(VaelabError, match="is not what 'cells' records"):
        study.load_spec(tmp_path / "spec.json")


def test_yaml_and_sweeps_union_without_duplicates(tmp_path):
    yaml_text = """\
name: both
base: {epochs: 1}
sweep:
  - grid: {dataset: [fashion-mnist, cifar10], latent_dim: [2, 16]}
  - zip: {dataset: [fashion-mnist, cifar10], latent_dim: [16, 128]}
    grid: {beta: [1.0, 4.0]}
"""
    spec = study.load_spec(write(tmp_path, yaml_text, "s.yaml"))
    ids = [c.run_id for c in spec.cells]
    assert len(ids) == len(set(ids)) == 4 + 4 - 1  # fashion-mnist z16 beta 1 appears in both sweeps once
    assert "dataset-cifar10__latent_dim-128__beta-4" in ids


def test_presets_have_the_study_shape():
    seed = study.preset_spec("seed")
    cfgs = [c.config for c in seed.cells]
    assert {c.dataset for c in cfgs} == {"fashion-mnist", "cifar10"}
    assert {c.latent_dim for c in cfgs if c.beta == 1.0} == {2, 4, 8, 16, 32, 64, 128}
    assert {c.beta for c in cfgs} == {0.5, 1.0, 2.0, 4.0, 8.0, 16.0}
    assert {c.seed for c in cfgs} == {0, 1, 2}
    assert len(study.preset_spec("quick").cells) < len(seed.cells)


def test_standard_preset_spans_the_grid_on_full_training_sets_with_count_budgets():
    cfgs = [c.config for c in study.preset_spec("standard").cells]
    assert len(cfgs) == 42  # 2 x 4 latent sizes + 3 more betas at latent 32 per dataset, x 3 seeds
    assert {c.latent_dim for c in cfgs if c.beta == 1.0} == {2, 8, 32, 128}
    assert {c.beta for c in cfgs} == {0.5, 1.0, 2.0, 8.0}
    for d in ("fashion-mnist", "cifar10"):  # every beta at latent 32 (beta 1 shared with the latent sweep), 3 seeds
        assert sorted((c.beta, c.seed) for c in cfgs if c.dataset == d and c.latent_dim == 32) == [
            (b, s) for b in (0.5, 1.0, 2.0, 8.0) for s in (0, 1, 2)
        ]
    # counts, the same on every machine; models kept at 1/4 and 1/2 of the budget; an EMA to make them good models
    assert all(c.train_size == 0 and c.test_size == 0 and not c.time_budget and c.budget for c in cfgs)
    assert all(c.snapshots == "0.25,0.5" and c.ema == 0.999 and not c.patience for c in cfgs)
    assert {c.budget for c in cfgs if c.dataset == "cifar10"} == {"3000steps"}


@pytest.mark.parametrize(
    "edit,line,msg",
    [
        (("latent_dim = [2, 8]", "latnt_dim = [2, 8]"), 11, "unknown field 'latnt_dim' (did you mean 'latent_dim'?)"),
        (("latent_dim = [2, 8]", "latent_dim = [2, 0]"), 11, "latent_dim must be >= 1"),
        (("epochs = 1", "epochs = -3"), 4, "epochs must be >= 1"),
        (('dataset = "fashion-mnist"', 'dataset = "kmnist"'), 3, "unknown dataset 'kmnist'"),
        (("[grid]", "[gird]"), 10, "unknown key 'gird' (did you mean 'grid'?)"),
        (("seed = [0]", "seed = 0"), 12, "[grid] seed must be a non-empty list"),
        (("seed = [0]", "seed = [0.5]"), 12, "[grid] field 'seed' must be int"),
    ],
)
def test_bad_specs_name_the_line(tmp_path, edit, line, msg):
    path = write(tmp_path, TINY_TOML.replace(*edit))
    with pytest.raises(VaelabError) as e:
        study.load_spec(path)
    assert str(e.value).startswith(f"{path}:{line}: ") and msg in str(e.value)


def test_run_resume_and_results(tiny_root, tmp_path, monkeypatch):
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    out = tmp_path / "S"
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 2}
    df = pd.read_csv(out / "results.csv")
    assert list(df["run_id"]) == ["latent_dim-2__seed-0", "latent_dim-8__seed-0"]
    parquet = pd.read_parquet(out / "results.parquet")  # the same table, typed (pyarrow is in the test set)
    assert list(parquet["run_id"]) == list(df["run_id"]) and parquet["neg_elbo"].tolist() == pytest.approx(
        df["neg_elbo"].tolist()
    )
    for col in (
        "latent_dim",
        "seed",
        "dataset",
        "beta",
        "neg_elbo",
        "recon",
        "kl",
        "bpd_elbo",
        "iwae_nll",
        "active_units",
        "psnr",
        "ssim",
        "train_seconds",
        "images_per_s",
    ):
        assert df[col].notna().all(), col
    assert json.loads((out / "study.json").read_text())["name"] == "tiny"
    # a finished run is never retrained
    monkeypatch.setattr("vaelab.study.execution.train", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 2}


def test_interrupted_run_resumes_and_finished_is_kept(tiny_root, tmp_path):
    spec = study.load_spec(write(tmp_path, TINY_TOML.replace("epochs = 1", "epochs = 3")))
    out = tmp_path / "S"
    study.run(study.StudySpec(spec.name, spec.base, spec.sweeps, spec.cells[:1]), out, data_dir=str(tiny_root))
    done_ckpt = (out / "runs" / spec.cells[0].run_id / "checkpoint.safetensors").stat().st_mtime_ns
    # simulate a kill after epoch 1 of the second cell: its checkpoint and a stale RUNNING marker remain
    from vaelab.training.loop import train

    cut = out / "runs" / spec.cells[1].run_id

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec.cells[1].config, cut, data_dir=tiny_root, on_epoch_end=stop)
    (cut / "RUNNING").write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert study.cell_status(cut) == "interrupted"
    first_epoch = load_checkpoint(cut)["history"][0]
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 2}
    hist = load_checkpoint(cut)["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[0] == first_epoch
    assert (out / "runs" / spec.cells[0].run_id / "checkpoint.safetensors").stat().st_mtime_ns == done_ckpt


def test_a_failing_cell_is_recorded_and_others_finish(tiny_root, tmp_path, capsys):
    text = TINY_TOML.replace("latent_dim = [2, 8]", "latent_dim = [2, 8]\nval_size = [40, 400]")
    spec_path = write(tmp_path, text)
    out = tmp_path / "S"
    code = main(["study", str(spec_path), "--out", str(out), "--data-dir", str(tiny_root)])
    assert code == 1
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["status"]) == ["done", "done", "failed", "failed"]
    assert df.loc[df["status"] == "failed", "error"].str.contains("val_size 400").all()
    assert main(["study", "status", str(out)]) == 1
    assert "failed or stale runs:" in capsys.readouterr().out


@pytest.mark.slow
def test_jobs_2_matches_jobs_1(tiny_root, tmp_path):
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    study.run(spec, tmp_path / "one", jobs=1, data_dir=str(tiny_root))
    assert study.run(spec, tmp_path / "two", jobs=2, data_dir=str(tiny_root)) == {"done": 2}
    a, b = study.collect(tmp_path / "one"), study.collect(tmp_path / "two")
    assert list(a["neg_elbo"]) == pytest.approx(list(b["neg_elbo"]), rel=1e-4)  # same seeds, other processes


@pytest.mark.slow
def test_sigkill_mid_study_then_rerun_completes(tiny_root, tmp_path):
    spec_path = write(
        tmp_path, TINY_TOML.replace("epochs = 1", "epochs = 40").replace("train_size = 100", "train_size = 200")
    )
    out = tmp_path / "S"
    cmd = [sys.executable, "-m", "vaelab", "study", str(spec_path), "--out", str(out), "--data-dir", str(tiny_root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "runs" / "latent_dim-2__seed-0" / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epochs_before = load_checkpoint(ckpt.parent)["epoch"]
    assert epochs_before < 40 or (ckpt.parent / "eval.json").exists()
    assert study.cell_status(ckpt.parent) in ("interrupted", "done")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    df = study.collect(out)
    assert list(df["status"]) == ["done", "done"] and list(df["epochs_done"]) == [40, 40]
    assert not list(out.rglob("*.tmp"))
    count("kill_trials")
    count("kill_trials_resumed_to_completion")


@pytest.mark.slow
def test_ray_executor_on_a_local_ray(tiny_root, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vaelab[ray]'")
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert study.run(spec, tmp_path / "S", executor="ray", data_dir=str(tiny_root)) == {"done": 2}
    finally:
        ray.shutdown()
    assert (tmp_path / "S" / "runs" / "latent_dim-8__seed-0" / "eval.json").is_file()


def test_ray_unreachable_cluster_is_one_line(tiny_root, tmp_path, capsys):
    pytest.importorskip("ray")
    code = main(
        [
            "study",
            str(write(tmp_path, TINY_TOML)),
            "--out",
            str(tmp_path / "S"),
            "--executor",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--data-dir",
            str(tiny_root),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Ray" in err and err.count("\n") == 1


def test_status_summaries(tiny_root, tmp_path, capsys):
    text = TINY_TOML.replace("seed = [0]", "seed = [0, 1]\nbeta = [1.0, 2.0]")
    out = tmp_path / "S"
    main(["study", str(write(tmp_path, text)), "--out", str(out), "--data-dir", str(tiny_root)])
    capsys.readouterr()
    assert main(["study", "status", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 done of 8" in printed and "by latent_dim (beta = 1)" in printed and "by beta" in printed
    lt = study.latent_table(study.collect(out))
    assert list(lt["n"]) == [2, 2] and lt["neg_elbo_std"].notna().all()


def test_cli_study_errors(tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "x")]) == 2
    assert main(["study", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert main(["study", "status", str(tmp_path)]) == 2
    assert main(["study", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 4 and "Traceback" not in err


def test_conditional_vae_runs_in_a_study(tiny_root, tmp_path):
    text = TINY_TOML.replace("latent_dim = [2, 8]", "latent_dim = [2]\nconditional = [false, true]")
    spec = study.load_spec(write(tmp_path, text))
    assert [c.run_id for c in spec.cells] == [
        "latent_dim-2__conditional-False__seed-0",
        "latent_dim-2__conditional-True__seed-0",
    ]
    assert study.run(spec, tmp_path / "S", data_dir=str(tiny_root)) == {"done": 2}
    from vaelab.runs.checkpoint import load_model

    _, model, _ = load_model(tmp_path / "S" / "runs" / spec.cells[1].run_id)
    assert model.num_classes == 10


def test_a_changed_spec_is_never_reported_from_old_runs(tiny_root, tmp_path, capsys):
    out = tmp_path / "S"
    spec_path = write(tmp_path, TINY_TOML)
    assert main(["study", str(spec_path), "--out", str(out), "--data-dir", str(tiny_root)]) == 0
    capsys.readouterr()
    write(tmp_path, TINY_TOML.replace("epochs = 1", "epochs = 2"))
    assert main(["study", str(spec_path), "--out", str(out), "--data-dir", str(tiny_root)]) == 2
    err = capsys.readouterr().err
    assert "run latent_dim-2__seed-0 was trained with another config (epochs 1 -> 2)" in err and "(and 1 more" in err
    assert json.loads((out / "study.json").read_text())["base"]["epochs"] == 1  # nothing rewritten
    assert main(["study", str(spec_path), "--out", str(out), "--data-dir", str(tiny_root), "--retrain-stale"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert list(df["status"]) == ["done", "done"] and list(df["epochs_done"]) == [2, 2]
    aside = out / "runs" / "latent_dim-2__seed-0.stale-1"
    assert json.loads((aside / "config.json").read_text())["epochs"] == 1  # set aside, not deleted


def test_collect_marks_a_run_with_another_config_stale(tiny_root, tmp_path):
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    out = tmp_path / "S"
    study.run(spec, out, data_dir=str(tiny_root))
    run = out / "runs" / spec.cells[0].run_id
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "beta": 3.0}))
    df = study.collect(out)
    assert list(df["status"]) == ["stale", "done"] and "beta" in df["error"].iloc[0]
    assert study.latent_table(df)["n"].tolist() == [1]  # the stale run is in no mean


def test_tables_group_by_every_varied_key_except_the_seed():
    df = pd.DataFrame(
        {
            "run_id": list("abcdefgh"),
            "status": ["done"] * 8,
            "dataset": ["fashion-mnist"] * 8,
            "latent_dim": [8] * 8,
            "beta": [1.0] * 8,
            "seed": [0, 1, 0, 1, 0, 1, 0, 1],
            "likelihood": ["bernoulli"] * 4 + ["discretized_logistic"] * 4,
            "lr": [1e-3, 1e-3, 1e-2, 1e-2] * 2,
            "neg_elbo": [100.0, 102, 110, 112, 2000, 2002, 2100, 2106],
        }
    )
    t = study.latent_table(df)
    assert len(t) == 4 and set(t.columns) >= {"likelihood", "lr"} and list(t["n"]) == [2, 2, 2, 2]
    assert sorted(t["neg_elbo"]) == [101.0, 111.0, 2001.0, 2103.0]
    assert "likelihood" in study.format_table(t, ["neg_elbo"])
    ci = t.sort_values("neg_elbo")["neg_elbo_ci"].iloc[0]
    assert ci == pytest.approx(12.706 * 1.4142 / 1.4142, rel=1e-3)  # t(0.975, 1) * std / sqrt(2), std = sqrt(2)


def test_ray_cells_ask_for_their_gpus(monkeypatch):
    """On a GPU cluster each cell must request its GPU share, or Ray would put them all on cuda:0."""
    import types

    seen = {}

    class FakeRay(types.SimpleNamespace):
        @staticmethod
        def is_initialized():
            return True

        @staticmethod
        def remote(**opts):
            seen.update(opts)
            return lambda fn: types.SimpleNamespace(remote=lambda *a: ("ref", a))

        @staticmethod
        def get(refs):
            seen["n"] = len(refs)

    monkeypatch.setitem(sys.modules, "ray", FakeRay())
    study.execution._run_ray([("r1", {}), ("r2", {})], None, None, gpus_per_run=0.5)
    assert seen == {"num_cpus": 1, "num_gpus": 0.5, "n": 2}
    assert study.ray_options(1) == {"num_cpus": 1, "num_gpus": 1}
    with pytest.raises(VaelabError, match="gpus-per-run"):
        study.run(study.preset_spec("quick"), "/tmp/never", gpus_per_run=-1)


def test_threads_per_run_reach_every_cell(tmp_path, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(
        study.execution,
        "run_cell",
        lambda run_dir, cfg, data_dir=None, threads=None, gpu=None, nproc=1: seen.append(threads),
    )
    spec = study.load_spec(write(tmp_path, TINY_TOML))
    study.run(spec, tmp_path / "S", threads=1)
    assert seen == [1, 1]
    assert main(["study", str(write(tmp_path, TINY_TOML)), "--out", str(tmp_path / "T"), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert "--threads must be in 1..1024, got 0" in err and err.count("\n") == 1


def test_threads_per_run_also_limit_the_blas_of_the_probes(tiny_root, tmp_path):
    """--threads caps numpy/scipy's BLAS as well as torch: a worker's scikit-learn probes must not spin on the
    other workers' cores."""
    from threadpoolctl import threadpool_info, threadpool_limits

    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    try:
        assert study.run(
            study.load_spec(write(tmp_path, TINY_TOML)), tmp_path / "S", data_dir=str(tiny_root), threads=1
        ) == {"done": 2}
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(n == 1 for n in blas)
    finally:
        for info in threadpool_info():
            threadpool_limits({info["prefix"]: before.get(info["filepath"], info["num_threads"])})


def test_results_say_how_far_from_convergence_each_run_stopped(tiny_root, tmp_path):
    from vaelab.study import analysis

    spec = study.load_spec(write(tmp_path, TINY_TOML.replace("epochs = 1", "epochs = 3")))
    out = tmp_path / "S"
    study.run(spec, out, data_dir=str(tiny_root))
    df = study.collect(out)
    for _, row in df.iterrows():
        val = [json.loads(line)["val_neg_elbo"] for line in (out / "runs" / row["run_id"] / "metrics.jsonl").open()]
        assert row["epochs_done"] == 3 and row["images_seen"] == 3 * 100  # three epochs of train_size 100
        assert row["last_val_change"] == pytest.approx((val[-1] - val[-2]) / val[-2])
    page = analysis.Page("t")
    page.section("Setup")
    analysis._convergence_table(page, df)
    table = page.sections[0]["items"][-1]
    head, rows = table["head"], table["rows"]
    assert table["kind"] == "table" and head[-1].startswith("last epoch's change") and len(rows) == 2  # per latent
    assert rows[0][:3] == ["fashion-mnist", "2", "1.0"] and rows[0][-2] == "0 of 1"
    assert rows[0][-1].startswith(f"{df['last_val_change'].iloc[0] * 100:+.3f} %")


@pytest.mark.slow
def test_a_study_trained_for_seconds_says_its_cells_depend_on_the_machine(tiny_root, tmp_path):
    from vaelab.app.commands import report

    spec = study.load_spec(write(tmp_path, TINY_TOML.replace("epochs = 1", 'epochs = 2\ntime_budget = "1h"')))
    out = tmp_path / "S"
    assert study.run(spec, out, data_dir=str(tiny_root)) == {"done": 2}
    report(out, data_dir=tiny_root, classifier=False)
    md = (out / "report" / "summary.md").read_text()
    assert "depends on the machine" in md and "images seen (min … max)" in md and "200 … 200" in md
    counted = study.load_spec(write(tmp_path, TINY_TOML.replace("epochs = 1", 'epochs = 1\nbudget = "2steps"')))
    assert study.run(counted, tmp_path / "C", data_dir=str(tiny_root)) == {"done": 2}
    report(tmp_path / "C", data_dir=tiny_root, classifier=False)
    assert "depends on the machine" not in (tmp_path / "C" / "report" / "summary.md").read_text()

"""The CLI on tiny data: the happy path, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import count
from vaelab.app.cli import main

TINY = [
    "--epochs",
    "1",
    "--latent-dim",
    "2",
    "--batch-size",
    "32",
    "--val-size",
    "40",
    "--iwae-samples",
    "3",
    "--device",
    "cpu",
]


def test_train_evaluate_sample_reconstruct(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", *TINY, "--out", str(run), "--data-dir", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "test: neg_elbo=" in out and "bpd_elbo=" in out
    assert json.loads((run / "eval.json").read_text())["latent_dim"] == 2
    assert (
        main(["evaluate", str(run), "--test-size", "10", "--iwae-samples", "2", "--json", "--data-dir", str(tiny_root)])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["test_size"] == 10
    assert (
        main(
            [
                "evaluate",
                str(run),
                "--test-size",
                "10",
                "--iwae-samples",
                "3",
                "--precision",
                "fp32",
                "--data-dir",
                str(tiny_root),
            ]
        )
        == 0
    )
    assert "IWAE K = 3 in fp32)" in capsys.readouterr().out
    assert json.loads((run / "eval.json").read_text())["iwae_precision"] == "fp32"
    assert main(["sample", str(run), "--n", "12", "--nrow", "4"]) == 0
    img = Image.open(run / "samples.png")
    assert img.size == (2 * (4 * 30 + 2), 2 * (3 * 30 + 2))  # 4x3 grid of 28px tiles, 2px gutters, x2 scale
    assert (
        main(["reconstruct", str(run), "--n", "5", "--png", str(tmp_path / "rec.png"), "--data-dir", str(tiny_root)])
        == 0
    )
    assert Image.open(tmp_path / "rec.png").size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))


def test_resume_from_cli_continues_the_stored_config(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--out", str(run), "--data-dir", str(tiny_root), "--no-eval"]
    assert main(args) == 0
    assert main(["train", "--resume", "--out", str(run), "--data-dir", str(tiny_root), "--no-eval"]) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["train", "--dataset", "kmnist", "--out", "{tmp}/x"], "unknown dataset 'kmnist'"),
        (["train", "--latent-dim", "0", "--out", "{tmp}/x"], "latent_dim must be >= 1"),
        (["train", "--beta", "-1", "--out", "{tmp}/x"], "beta must be >= 0"),
        (["train", "--out", "/proc/vaelab-x"], "cannot create output directory"),
        (["evaluate", "{tmp}/missing"], "no such run directory"),
        (["evaluate", "{tmp}"], "not a vaelab run directory"),
        (["sample", "{tmp}"], "not a vaelab run directory"),
        (["train", "--epochs", "many", "--out", "{tmp}/x"], "invalid int value"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, msg):
    code = exit_code([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and err.count("\n") == 1 and "Traceback" not in err


def exit_code(argv) -> int:
    """main()'s return value, or the code of the SystemExit that argparse raises for bad usage."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_missing_data_offline_is_one_line(tmp_path):
    env = {**os.environ, "VAELAB_NO_DOWNLOAD": "1", "VAELAB_CACHE": str(tmp_path / "c")}
    env.pop("VAELAB_DATA", None)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaelab",
            "train",
            "--dataset",
            "cifar10",
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cifar-10-python.tar.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    assert main(["sample", str(tmp_path)]) == 2
    assert "not a valid safetensors file" in capsys.readouterr().err


class _Boom:
    """A pickle payload that, when unpickled, creates a marker file (as os.system would run a command)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["sample", "evaluate", "reconstruct", "report", "train-resume", "study-resume"])
def test_a_malicious_checkpoint_never_runs(tiny_root, tmp_path, capsys, command):
    """The old format was a pickle: a planted checkpoint.pt must be refused by every command that loads a run,
    without unpickling it (the marker file must not appear)."""
    import torch

    from vaelab import study

    marker = tmp_path / "PWNED"
    spec = study.parse_spec(
        {
            "name": "s",
            "base": {
                "epochs": 1,
                "latent_dim": 2,
                "val_size": 40,
                "batch_size": 32,
                "device": "cpu",
                "iwae_samples": 2,
            },
            "grid": {"seed": [0]},
        }
    )
    sdir = tmp_path / "S"
    run = sdir / "runs" / spec.cells[0].run_id
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(spec.cells[0].config.to_dict()))
    torch.save({"config": {}, "evil": _Boom(marker)}, run / "checkpoint.pt")
    argv = {
        "sample": ["sample", str(run)],
        "evaluate": ["evaluate", str(run), "--data-dir", str(tiny_root)],
        "reconstruct": ["reconstruct", str(run), "--data-dir", str(tiny_root)],
        "report": ["report", str(run), "--no-classifier", "--data-dir", str(tiny_root)],
        "train-resume": ["train", "--resume", "--out", str(run), "--data-dir", str(tiny_root)],
    }
    if command == "study-resume":
        study.execution._write_study_json(sdir, spec)
        assert study.run(spec, sdir, data_dir=str(tiny_root)) == {"failed": 1}
        assert "vaelab convert" in json.loads((run / "error.json").read_text())["error"]
    else:
        assert main(argv[command]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "vaelab convert" in err and "--i-trust-this-file" in err
    count("malicious_files_tried")
    count("malicious_files_executed", int(marker.exists()))
    assert not marker.exists()


def test_convert_needs_trust_and_then_gives_a_safe_checkpoint(tiny_root, tmp_path, capsys):
    """A benign vaelab 0.1 checkpoint (same content, pickled) converts only with --i-trust-this-file."""
    import torch

    from vaelab.runs.checkpoint import load_checkpoint

    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--data-dir", str(tiny_root), "--no-eval"]) == 0
    ckpt = load_checkpoint(run)
    (run / "checkpoint.safetensors").unlink()
    torch.save({k: v for k, v in ckpt.items() if k != "format"}, run / "checkpoint.pt")
    assert main(["sample", str(run)]) == 2
    assert main(["convert", str(run)]) == 2
    assert "--i-trust-this-file" in capsys.readouterr().err
    assert main(["convert", str(run), "--i-trust-this-file"]) == 0
    new = load_checkpoint(run)
    assert all(torch.equal(new["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert main(["sample", str(run)]) == 0 and (run / "checkpoint.pt").exists()  # the old file is kept


def test_help_everywhere_has_examples(capsys):
    for cmd in ("train", "evaluate", "sample", "reconstruct", "datasets"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_datasets_command(tiny_root, capsys):
    assert main(["datasets", "--data-dir", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "unverified" in out and "missing" in out and "no known hash" in out


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        ["--prior", "mog", "--prior-components", "3"],
        ["--prior", "vamp", "--prior-components", "3"],
        ["--posterior", "iaf", "--flow-steps", "2", "--flow-hidden", "16"],
    ],
)
def test_model_parts_train_evaluate_and_sample_from_the_command_line(tiny_root, tmp_path, capsys, flags):
    run = tmp_path / "run"
    assert main(["train", *TINY, *flags, "--out", str(run), "--data-dir", str(tiny_root)]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert "kl_per_dim" not in ev and ev["neg_elbo"] == pytest.approx(ev["recon"] + ev["kl"])
    assert main(["sample", str(run), "--n", "4", "--nrow", "2"]) == 0
    assert main(["report", str(run), "--no-classifier", "--data-dir", str(tiny_root)]) == 0
    capsys.readouterr()
    assert main(["train", "--prior", "flow", "--out", str(tmp_path / "x"), "--data-dir", str(tiny_root)]) == 2
    from vaelab.models.priors import PRIORS

    assert f"unknown prior 'flow' (known: {', '.join(PRIORS)})" in capsys.readouterr().err


def test_resume_where_there_is_no_run_is_refused_and_creates_nothing(tmp_path, capsys):
    target = tmp_path / "typo"
    assert main(["train", "--resume", "--out", str(target), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds no run to resume" in err and len(err.splitlines()) == 1
    assert not target.exists()


def test_a_study_whose_dataset_is_missing_fails_before_any_cell(tmp_path, capsys):
    spec = tmp_path / "s.json"
    spec.write_text(
        json.dumps({"name": "s", "base": {"dataset": f"npz:{tmp_path / 'missing.npz'}"}, "grid": {"seed": [0, 1]}})
    )
    assert main(["study", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.npz is not a file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_study_with_failed_cells_prints_the_first_reason(tiny_root, tmp_path, capsys):
    spec = tmp_path / "s.json"  # latent_dim 100,000 fails in every cell (too big for memory), after the data checks
    spec.write_text(
        json.dumps(
            {
                "name": "s",
                "base": {"epochs": 1, "train_size": 50, "val_size": 10, "test_size": 20, "latent_dim": 2_000_000_000},
                "grid": {"seed": [0]},
            }
        )
    )
    assert main(["study", str(spec), "--out", str(tmp_path / "out"), "--data-dir", str(tiny_root)]) == 1
    err = capsys.readouterr().err
    assert "first failure: seed-0: " in err and "GiB" in err


@pytest.mark.parametrize("where", ["config", "spec"])
def test_booleans_are_not_integers(tmp_path, capsys, where):
    if where == "config":
        (tmp_path / "c.json").write_text('{"epochs": true}')
        argv = ["train", "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "r")]
    else:
        (tmp_path / "s.json").write_text('{"name": "s", "grid": {"epochs": [true]}}')
        argv = ["study", str(tmp_path / "s.json"), "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "field 'epochs' must be int, got True" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_version_names_the_checkpoint_format(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "vaelab 0.2.0"


def test_every_option_of_every_command_says_what_it_does():
    import argparse
    from dataclasses import fields

    from vaelab.app.cli import build_parser
    from vaelab.runs.config import HELP, TrainConfig

    assert set(HELP) == {f.name for f in fields(TrainConfig)}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    silent = [
        f"{name} {a.option_strings or a.dest}"
        for name, parser in sub.choices.items()
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not silent, f"options without help text: {silent}"
    for parser in sub.choices.values():  # and each command's help renders (argparse reads % as a format)
        assert "--help" in parser.format_help()


def test_train_takes_a_count_budget_and_refuses_a_bare_number(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "30", "--budget", "3steps", "--out", str(run), "--data-dir", str(tiny_root)]
    assert main([*argv, "--no-eval"]) == 0
    assert "budget 3steps spent at step 3" in capsys.readouterr().out
    assert main(["train", "--budget", "3000", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a budget: '3000'" in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_bf16_where_it_is_emulated_is_one_warning_line(tiny_root, tmp_path, capsys, monkeypatch):
    from vaelab.training import budget

    monkeypatch.setattr(budget, "bf16_native", lambda device: False)
    argv = ["train", *TINY, "--budget", "2steps", "--bf16", "--no-eval", "--out", str(tmp_path / "run")]
    assert main([*argv, "--data-dir", str(tiny_root)]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warned == [budget.EMULATED_BF16.format(device="cpu").join(["vaelab: warning: ", ""])]


def test_findings_from_a_results_csv_alone(tmp_path, capsys):
    """`vaelab findings` tests the claims on a committed results.csv: no runs, models or data."""
    from pathlib import Path

    csv = Path(__file__).parent.parent / "docs" / "studies" / "standard" / "results.csv"
    assert main(["findings", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "Fashion-MNIST is easier to model than CIFAR-10" in out and "Holm-adjusted p" in out
    assert "costs compression" in out and "PCA of the pixels" in out
    assert out.startswith("## At a glance\n\n| claim | dataset | verdict |") and "| **partly holds** |" in out
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert main(["findings", str(tmp_path / "x.csv")]) == 2
    assert "not a vaelab results table" in capsys.readouterr().err


def test_findings_draw_a_forest_and_refresh_a_summary(tmp_path, capsys):
    """--forest writes the effects against their ±δ bands; --summary replaces only a summary's Findings section."""
    import shutil
    from pathlib import Path

    study = Path(__file__).parent.parent / "docs" / "studies" / "cifar-beta"
    shutil.copy(study / "results.csv", tmp_path / "results.csv")
    shutil.copy(study / "results-fractions.csv", tmp_path / "results-fractions.csv")
    summary = tmp_path / "summary.md"
    summary.write_text("# s\n\n## Findings\nold text\n\n## Datasets\nkept\n")
    argv = ["findings", str(tmp_path / "results.csv"), "--forest", str(tmp_path / "f.png"), "--summary", str(summary)]
    assert main(argv) == 0
    capsys.readouterr()
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "fig" / "findings_forest.png").is_file()
    text = summary.read_text()
    assert "old text" not in text and text.endswith("## Datasets\nkept\n") and "| claim | dataset | verdict |" in text
    assert "not converged" in text and "fig/findings_forest.png" in text
    for bad in (["--forest", str(tmp_path / "no" / "f.png")], ["--summary", str(tmp_path / "results.csv")]):
        assert main(["findings", str(tmp_path / "results.csv"), *bad]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "budget, words",
    [
        ("1e6widgets", "not a budget: '1e6widgets'"),
        ("1.5steps", "a budget of steps is a whole number"),
        ("2.5images", "whole number"),
    ],
)
def test_a_budget_in_an_unknown_unit_or_a_fraction_of_a_step_is_refused(budget, words, tmp_path, capsys):
    assert main(["train", "--budget", budget, "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_more_processes_than_the_machine_has_cores_are_refused_before_any_starts(tiny_root, tmp_path, capsys):
    import os

    n = (os.cpu_count() or 1) + 1
    argv = ["train", *TINY, "--nproc", str(n), "--out", str(tmp_path / "r"), "--data-dir", str(tiny_root)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert f"--nproc {n} is more than this machine's {n - 1} CPU cores" in err and not (tmp_path / "r").exists()


def test_export_refuses_to_replace_a_file_or_make_a_folder_unless_told(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--no-eval", "--out", str(run), "--data-dir", str(tiny_root)]) == 0
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"someone's file")
    capsys.readouterr()
    assert main(["export", str(run), str(target)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and target.read_bytes() == b"someone's file"
    assert main(["export", str(run), str(target), "--force"]) == 0 and target.read_bytes() != b"someone's file"
    assert main(["export", str(run), str(tmp_path / "no" / "such" / "m.safetensors")]) == 2
    assert "no such folder" in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys):
    """Ctrl-C while torch and the rest import (before the CLI exists) is one line and exit 130, not a traceback."""
    import importlib.abc
    import sys

    from vaelab.__main__ import console

    class Interrupted(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vaelab.app.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "vaelab.app.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    assert console() == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaelab: interrupted while starting; nothing was changed"]


def test_every_actionable_error_is_one_line_whatever_its_filename():
    from vaelab.core.errors import VaelabError, describe

    assert (
        describe(OSError(28, "No space left on device", "/d/ckpt")) == "vaelab: error: /d/ckpt: No space left on device"
    )
    assert describe(OSError(9, "Bad file descriptor", 3)) == "vaelab: error: 3: Bad file descriptor"  # an fd, not a str
    assert describe(OSError("disk gone")) == "vaelab: error: disk gone"
    assert describe(PermissionError(13, "Permission denied", "/r")) == "vaelab: error: /r: permission denied"
    assert describe(VaelabError("bad\n  value")) == "vaelab: error: bad value"
    assert describe(RuntimeError("CUDA out of memory")).endswith(
        "use smaller sizes (--batch-size, --latent-dim, --n, --iwae-samples)"
    )
    assert describe(RuntimeError("a bug")) is None and describe(ValueError("x")) is None

"""The CLI on tiny data: the happy path, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from vaelab.cli import main

TINY = ["--epochs", "1", "--latent-dim", "2", "--batch-size", "32", "--val-size", "40", "--iwae-samples", "3",
        "--device", "cpu"]


def test_train_evaluate_sample_reconstruct(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", *TINY, "--out", str(run), "--data-dir", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "test: neg_elbo=" in out and "bpd_elbo=" in out
    assert json.loads((run / "eval.json").read_text())["latent_dim"] == 2
    assert main(["evaluate", str(run), "--test-size", "10", "--iwae-samples", "2", "--json", "--data-dir", str(tiny_root)]) == 0
    assert json.loads(capsys.readouterr().out)["test_size"] == 10
    assert main(["sample", str(run), "--n", "12", "--nrow", "4"]) == 0
    img = Image.open(run / "samples.png")
    assert img.size == (2 * (4 * 30 + 2), 2 * (3 * 30 + 2))  # 4x3 grid of 28px tiles, 2px gutters, x2 scale
    assert main(["reconstruct", str(run), "--n", "5", "--png", str(tmp_path / "rec.png"), "--data-dir", str(tiny_root)]) == 0
    assert Image.open(tmp_path / "rec.png").size == (2 * (5 * 30 + 2), 2 * (2 * 30 + 2))


def test_resume_from_cli_continues_the_stored_config(tiny_root, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--out", str(run), "--data-dir", str(tiny_root), "--no-eval"]
    assert main(args) == 0
    assert main(["train", "--resume", "--out", str(run), "--data-dir", str(tiny_root), "--no-eval"]) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv,msg", [
    (["train", "--dataset", "mnist", "--out", "{tmp}/x"], "unknown dataset 'mnist'"),
    (["train", "--latent-dim", "0", "--out", "{tmp}/x"], "latent_dim must be >= 1"),
    (["train", "--beta", "-1", "--out", "{tmp}/x"], "beta must be >= 0"),
    (["train", "--out", "/proc/vaelab-x"], "cannot create output directory"),
    (["evaluate", "{tmp}/missing"], "no such run directory"),
    (["evaluate", "{tmp}"], "not a vaelab run directory"),
    (["sample", "{tmp}"], "not a vaelab run directory"),
    (["train", "--epochs", "many", "--out", "{tmp}/x"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
])
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
    r = subprocess.run([sys.executable, "-m", "vaelab.cli", "train", "--dataset", "cifar10", "--out", str(tmp_path / "r"),
                        "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cifar-10-python.tar.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_foreign_checkpoint_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["sample", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_help_everywhere_has_examples(capsys):
    for cmd in ("train", "evaluate", "sample", "reconstruct", "datasets"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_datasets_command(tiny_root, capsys):
    assert main(["datasets", "--data-dir", str(tiny_root)]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "found" in out and "missing" in out

"""No traceback for any input, no debris, one writer at a time, a clean Ctrl-C: generated inputs (hypothesis)
and hostile situations, each counted (see conftest.RELIABILITY and the README's Reliability section)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import count, tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.core.store import save_tree
from vaelab.runs.config import FIELDS, from_dict
from vaelab.study import load_spec, parse_spec
from vaelab.training.loop import train

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# ---------------------------------------------------------------- generated values

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
keys = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=10))


@SETTINGS
@given(st.dictionaries(keys, junk, max_size=6))
def test_any_config_dict_is_accepted_or_refused_in_one_line(d):
    count("bad_inputs_tried")
    try:
        cfg = from_dict(d)
    except VaelabError as e:
        assert "\n" not in str(e)
        count("bad_inputs_clean")
        return
    assert cfg.latent_dim >= 1 and all(v == v for v in cfg.to_dict().values())  # no NaN slipped through
    count("bad_inputs_clean")


spec_values = st.recursive(
    junk, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)), max_leaves=8
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["name", "base", "grid", "zip", "sweep", "bogus"]), spec_values, max_size=4))
def test_any_study_spec_is_accepted_or_refused_in_one_line(d):
    count("bad_inputs_tried")
    try:
        spec = parse_spec(d, "spec.json")
    except VaelabError as e:
        assert "\n" not in str(e)
        count("bad_inputs_clean")
        return
    assert spec.cells  # an accepted spec defines at least one run
    count("bad_inputs_clean")


@SETTINGS
@given(st.binary(max_size=64), st.sampled_from([".toml", ".yaml", ".json"]))
def test_any_bytes_as_a_spec_file_are_refused_in_one_line(tmp_path_factory, blob, suffix):
    path = tmp_path_factory.mktemp("spec") / f"s{suffix}"
    path.write_bytes(blob)
    count("bad_inputs_tried")
    try:
        load_spec(path)
    except VaelabError as e:
        assert "\n" not in str(e)
    count("bad_inputs_clean")


# ---------------------------------------------------------------- the command line, generated


@pytest.fixture(scope="module")
def trained_run(tiny_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_config(latent_dim=2), run, dataset=vdata.load("fashion-mnist", tiny_root))
    return run


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own exit for bad usage
        code = e.code
    return code, capsys.readouterr().err


def assert_clean(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("vaelab"), err
    count("bad_inputs_clean")


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


numbers = st.sampled_from(["-5", "0", "1", "3", "2", "1e3", "inf", "nan", "-inf", "x", str(2**70), "1.5", ""])
train_flags = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "--epochs",
                "--latent-dim",
                "--beta",
                "--lr",
                "--warmup-epochs",
                "--seed",
                "--val-size",
                "--train-size",
                "--test-size",
                "--batch-size",
                "--iwae-samples",
                "--max-skip-share",
                "--grad-clip",
                "--likelihood",
                "--device",
                "--dataset",
                "--preset",
                "--gaussian-sigma",
            ]
        ),
        numbers,
    ),
    max_size=4,
)


@SETTINGS
@given(train_flags)
def test_generated_train_commands_succeed_or_fail_cleanly_without_debris(tiny_root, tmp_path_factory, capsys, flags):
    base = tmp_path_factory.mktemp("cli")
    out = base / "run"
    argv = ["train", "--out", str(out), "--data-dir", str(tiny_root), "--no-eval"]
    for flag, value in flags:
        if flag == "--epochs" and value not in ("-5", "0", "x", "inf", "nan", "-inf", "", "1.5", "1e3", str(2**70)):
            value = "1"  # valid epoch counts stay small: a run that trains must be quick
        if flag in ("--train-size",) and value in ("1", "2", "3"):
            value = "0"
        argv += [flag, value]
    if not any(f == "--epochs" for f, _ in flags):
        argv += ["--epochs", "1"]
    argv += ["--val-size", "40"] if not any(f == "--val-size" for f, _ in flags) else []
    count("bad_inputs_tried")
    code, err = run_cli(argv, capsys)
    assert_clean(code, err)
    if code != 0:
        assert tree(base) == set(), f"debris after a refused command: {tree(base)}"


run_args = st.lists(
    st.tuples(
        st.sampled_from(["--n", "--nrow", "--seed", "--test-size", "--iwae-samples", "--png"]),
        st.sampled_from(["-5", "0", "2", "7", str(2**40), "x", "DIR", "DEV", "LINK", "OK"]),
    ),
    max_size=3,
)


@SETTINGS
@given(st.sampled_from(["sample", "reconstruct", "evaluate"]), run_args)
def test_generated_run_commands_succeed_or_fail_cleanly(trained_run, tiny_root, tmp_path_factory, capsys, cmd, args):
    base = tmp_path_factory.mktemp("png")
    (base / "dir.png").mkdir()
    (base / "target").write_text("keep")
    (base / "link.png").symlink_to(base / "target")
    paths = {
        "DIR": str(base / "dir.png"),
        "DEV": "/dev/null",
        "LINK": str(base / "link.png"),
        "OK": str(base / "ok.png"),
    }
    argv = [cmd, str(trained_run), "--data-dir", str(tiny_root)]
    for flag, value in args:
        # a plain --png value names a file inside the test's folder, never the current directory
        argv += [flag, paths.get(value, str(base / value)) if flag == "--png" else ("3" if value in paths else value)]
    count("bad_inputs_tried")
    code, err = run_cli(argv, capsys)
    assert_clean(code, err)
    assert (base / "target").read_text() == "keep" and (base / "link.png").is_symlink()
    assert Path("/dev/null").is_char_device()


# ---------------------------------------------------------------- damaged and foreign files


def _damage(kind: str, run: Path, study_dir: Path, tmp: Path) -> list[str]:
    if kind == "checkpoint-dict":
        save_tree(run / "checkpoint.safetensors", {"format": 2, "anything": torch.ones(2)})
        return ["sample", str(run)]
    if kind == "checkpoint-tensor-only":
        (run / "checkpoint.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
        return ["sample", str(run)]
    if kind == "checkpoint-other-architecture":
        from vaelab.runs.checkpoint import load_checkpoint, save_checkpoint

        ck = load_checkpoint(run)
        ck["config"] = {**ck["config"], "latent_dim": 7}
        save_checkpoint(run, {k: v for k, v in ck.items() if k != "format"})
        return ["sample", str(run)]
    if kind == "config-list":
        (tmp / "c.json").write_text("[1, 2]")
        return ["train", "--config", str(tmp / "c.json"), "--out", str(tmp / "x")]
    if kind == "config-folder":
        return ["train", "--config", str(tmp), "--out", str(tmp / "x")]
    if kind == "config-binary":
        (tmp / "c.json").write_bytes(b"\xff\xfe\x00garbage")
        return ["train", "--config", str(tmp / "c.json"), "--out", str(tmp / "x")]
    if kind == "metrics-damaged":
        (run / "metrics.jsonl").write_text('{"epoch": 1}\n{not json\n')
        return ["report", str(run), "--no-classifier"]
    if kind == "study-json-damaged":
        (study_dir / "study.json").write_text("{ broken")
        return ["study", "status", str(study_dir)]
    if kind == "study-json-list":
        (study_dir / "study.json").write_text("[1, 2, 3]")
        return ["study", "status", str(study_dir)]
    if kind == "spec-base-5":
        (tmp / "s.toml").write_text("base = 5\n[grid]\nseed = [0]\n")
        return ["study", str(tmp / "s.toml"), "--out", str(tmp / "S")]
    if kind == "spec-grid-list":
        (tmp / "s.toml").write_text("grid = [1, 2]\n")
        return ["study", str(tmp / "s.toml"), "--out", str(tmp / "S")]
    if kind == "spec-sweep-5":
        (tmp / "s.toml").write_text("sweep = 5\n")
        return ["study", str(tmp / "s.toml"), "--out", str(tmp / "S")]
    if kind == "spec-empty":
        (tmp / "s.toml").write_text("name = 'x'\n")
        return ["study", str(tmp / "s.toml"), "--out", str(tmp / "S")]
    if kind == "spec-not-utf8":
        (tmp / "s.toml").write_bytes(b"\xff\xfe[grid]\n")
        return ["study", str(tmp / "s.toml"), "--out", str(tmp / "S")]
    if kind == "huge-latent":
        return ["train", "--latent-dim", str(2**30), "--out", str(tmp / "x")]
    if kind == "huge-iwae":
        return ["evaluate", str(run), "--iwae-samples", str(2**30)]
    raise AssertionError(kind)


DAMAGE = [
    "checkpoint-dict",
    "checkpoint-tensor-only",
    "checkpoint-other-architecture",
    "config-list",
    "config-folder",
    "config-binary",
    "metrics-damaged",
    "study-json-damaged",
    "study-json-list",
    "spec-base-5",
    "spec-grid-list",
    "spec-sweep-5",
    "spec-empty",
    "spec-not-utf8",
    "huge-latent",
    "huge-iwae",
]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_and_foreign_files_are_one_line_errors(tiny_root, tmp_path, capsys, kind):
    import shutil

    ds = vdata.load("fashion-mnist", tiny_root)
    study_dir = tmp_path / "study"
    run = study_dir / "runs" / "r"
    train(tiny_config(latent_dim=2), run, dataset=ds)
    (study_dir / "study.json").write_text(json.dumps({"name": "s", "cells": []}))
    work = tmp_path / "work"
    work.mkdir()
    argv = _damage(kind, run, study_dir, work) + ["--data-dir", str(tiny_root)] * (kind.startswith(("huge", "metrics")))
    before = tree(work)
    count("bad_inputs_tried")
    code, err = run_cli(argv, capsys)
    assert code == 2, (kind, err)
    assert_clean(code, err)
    assert tree(work) == before, f"debris: {tree(work) - before}"
    shutil.rmtree(tmp_path)


def test_val_size_0_says_there_is_no_validation_set(tiny_root, tmp_path, capsys):
    code = main(
        [
            "train",
            *"--epochs 1 --latent-dim 2 --val-size 0 --iwae-samples 2 --device cpu".split(),
            "--out",
            str(tmp_path / "r"),
            "--data-dir",
            str(tiny_root),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "no validation set (val_size 0)" in out and "nan" not in out


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e400"])
@pytest.mark.parametrize("flag", ["--lr", "--beta", "--warmup-epochs"])
def test_non_finite_numbers_are_refused_before_training(tiny_root, tmp_path, capsys, flag, value):
    count("bad_inputs_tried")
    code, err = run_cli(
        ["train", f"{flag}={value}", "--out", str(tmp_path / "r"), "--data-dir", str(tiny_root)], capsys
    )
    assert code == 2 and "finite" in err and not (tmp_path / "r").exists()
    assert_clean(code, err)


# ---------------------------------------------------------------- processes: one writer, Ctrl-C

SLOW_SPEC = """name = "slow"
[base]
epochs = 400
latent_dim = 2
batch_size = 32
val_size = 40
train_size = 200
device = "cpu"
iwae_samples = 2
[grid]
seed = [0, 1, 2, 3]
"""


def _env(tmp_path):
    return {**os.environ, "VAELAB_NO_DOWNLOAD": "1", "VAELAB_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def _wait_for(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_second_study_process_on_the_same_folder_is_refused(tiny_root, tmp_path):
    (tmp_path / "slow.toml").write_text(SLOW_SPEC)
    out = tmp_path / "S"
    cmd = [
        sys.executable,
        "-m",
        "vaelab",
        "study",
        str(tmp_path / "slow.toml"),
        "--out",
        str(out),
        "--data-dir",
        str(tiny_root),
    ]
    first = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: list(out.glob("runs/*/metrics.jsonl")), 120)
        for _ in range(2):  # another study and a direct train --resume of the cell in flight, twice
            count("concurrent_writer_trials", 2)
            second = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
            assert second.returncode == 2 and "in use by another vaelab process" in second.stderr
            assert second.stderr.count("\n") == 1
            run = next(out.glob("runs/*/metrics.jsonl")).parent
            other = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "vaelab",
                    "train",
                    "--resume",
                    "--out",
                    str(run),
                    "--data-dir",
                    str(tiny_root),
                ],
                env=_env(tmp_path),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert other.returncode == 2 and "in use by another vaelab process" in other.stderr
            count("concurrent_writers_refused", 2)
    finally:
        first.kill()
        first.wait()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text()
    except FileNotFoundError:
        return True


def _start_parallel_study(tiny_root, tmp_path) -> tuple[subprocess.Popen, Path]:
    """A slow `vaelab study --jobs 2` in its own session (so a test can signal its whole process group)."""
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW_SPEC)
    out = tmp_path / "S"
    cmd = [sys.executable, "-m", "vaelab", "study", str(spec), "--out", str(out), "--jobs", "2"]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(tiny_root)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A shell without job control starts background commands with SIGINT ignored (POSIX), and Python then
        # installs no KeyboardInterrupt handler: the suite run as 'bash .ci/run &' would never see a Ctrl-C.
        preexec_fn=_default_sigint,
    )
    return proc, out


@pytest.mark.slow
def test_one_ctrl_c_stops_a_parallel_study_promptly_and_it_resumes(tiny_root, tmp_path):
    proc, out = _start_parallel_study(tiny_root, tmp_path)
    assert _wait_for(lambda: len(list(out.glob("runs/*/checkpoint.safetensors"))) >= 2, 180)
    markers = [json.loads(p.read_text())["pid"] for p in out.glob("runs/*/RUNNING")]
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _, err = proc.communicate(timeout=60)
    waited = time.monotonic() - t0
    assert proc.returncode == 130 and waited < 15, (proc.returncode, waited, err)
    assert "run the same 'vaelab study' command again" in err and "--resume" not in err
    assert "Traceback" not in err and err.strip().count("\n") == 0
    for pid in markers:  # the workers are gone, not training on
        assert _gone(pid)
    # Nothing lost: every interrupted run holds a readable checkpoint that a resume continues from.
    from vaelab.runs.checkpoint import load_checkpoint
    from vaelab.study import cell_status

    runs = [p.parent for p in out.glob("runs/*/checkpoint.safetensors")]
    assert len(runs) >= 2
    for run in runs:
        assert load_checkpoint(run)["epoch"] >= 1 and cell_status(run) == "interrupted"
    count("kill_trials")
    count("kill_trials_resumable", len(runs))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the kernel's parent-death signal")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killing_only_the_driver_of_a_parallel_study_ends_its_workers(tiny_root, tmp_path, sig):
    """kill PID (or a scheduler's SIGTERM, or the OOM killer's SIGKILL) reaches the driver alone, not its process
    group; its worker processes must not train on as orphans."""
    proc, out = _start_parallel_study(tiny_root, tmp_path)
    try:
        assert _wait_for(lambda: len(list(out.glob("runs/*/RUNNING"))) >= 2, 180)
        workers = [json.loads(p.read_text())["pid"] for p in out.glob("runs/*/RUNNING")]
        assert workers and proc.pid not in workers
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert _wait_for(lambda: all(_gone(pid) for pid in workers), 30), workers
    finally:  # whatever happened, leave no process of this test behind (they share its session)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if sig == signal.SIGTERM:  # handled as Ctrl-C is: one line, the way to continue, the shell's code for SIGTERM
        assert proc.returncode == 143 and "run the same 'vaelab study' command again" in err, (proc.returncode, err)
        assert "Traceback" not in err and err.strip().count("\n") == 0
    else:
        assert proc.returncode == -signal.SIGKILL
    count("kill_trials")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_one_writes_nothing(tiny_root, tmp_path, capsys):
    count("bad_inputs_tried")
    code, err = run_cli(
        ["train", "--device", "cuda", "--out", str(tmp_path / "r"), "--data-dir", str(tiny_root)], capsys
    )
    assert code == 2 and "CUDA is not available" in err and not (tmp_path / "r").exists()
    assert_clean(code, err)

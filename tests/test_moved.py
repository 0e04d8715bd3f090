"""The import paths modules had before the layer packages (0.3) still import for one release, warn, and give the
very objects of the new paths; CHANGELOG names every move."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from vaelab.core.moved import MOVED

ROOT = Path(__file__).parent.parent


def _fresh(name: str):
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        sys.modules.pop(key)
    parent = name.rsplit(".", 1)[0]
    if parent in MOVED:  # an old package's own warning is its own test's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module(parent)
    return importlib.import_module(name)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_each_old_path_imports_warns_and_names_its_new_home(old):
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {MOVED[old][0]}; the old path goes in vaelab 0\.4"):
        module = _fresh(old)
    home = importlib.import_module(MOVED[old][0])
    public = [n for n in vars(home) if not n.startswith("_") and getattr(home, n).__class__.__name__ != "module"]
    assert public, home
    for name in public:  # every name of the new home, the same object through the old path
        assert getattr(module, name) is getattr(home, name)


def test_names_that_moved_to_other_modules_come_from_there():
    from vaelab.core import device
    from vaelab.runs import checkpoint, presets
    from vaelab.study import folders
    from vaelab.training import budget, epochs

    with pytest.warns(DeprecationWarning):
        old_train, old_checkpoint, old_run, old_config = (
            _fresh(n) for n in ("vaelab.train", "vaelab.checkpoint", "vaelab.run", "vaelab.config")
        )
    assert old_checkpoint.resolve_device is device.resolve_device and old_checkpoint.check_fits is device.check_fits
    assert old_run.Study is folders.Study and old_run.Reproduction is folders.Reproduction
    assert old_config.preset is presets.preset
    assert old_train.save_checkpoint is checkpoint.save_checkpoint and old_train.step_flops is budget.step_flops
    assert old_train.epoch_row is epochs.epoch_row
    with pytest.raises(AttributeError, match=r"'vaelab.train' \(now vaelab.training.loop\) has no attribute 'nope'"):
        old_train.nope  # noqa: B018


def test_old_submodules_and_from_imports_work():
    from vaelab.training.budget import budget_steps
    from vaelab.training.loop import train as new_train

    with pytest.warns(DeprecationWarning):
        _fresh("vaelab.train")
        from vaelab.train import train
        from vaelab.train.budget import budget_steps as old_budget_steps
    assert train is new_train and old_budget_steps is budget_steps


def test_a_path_that_never_existed_is_still_not_found():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vaelab.nonexistent")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vaelab.train.nonexistent")


def test_the_warning_points_at_the_importing_line(tmp_path):
    """Python shows a DeprecationWarning by default when __main__ triggers it: the warning names the user's file."""
    script = tmp_path / "user.py"
    script.write_text("import vaelab.evaluate\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{script}:1: DeprecationWarning: vaelab.evaluate moved to vaelab.evaluation.evaluate" in r.stderr


def test_changelog_lists_every_move():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    missing = [f"{old} → {MOVED[old][0]}" for old in MOVED if f"`{old}` → `{MOVED[old][0]}`" not in changelog]
    assert not missing, missing


def test_the_old_report_function_still_imports_from_the_renderer_and_warns():
    from vaelab import report as renderer
    from vaelab.app.commands import report

    with pytest.warns(DeprecationWarning, match="vaelab.report.report moved to vaelab.app.commands.report"):
        assert renderer.report is report
    with pytest.raises(AttributeError):
        renderer.nope  # noqa: B018

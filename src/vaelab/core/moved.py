"""Old import paths of modules that moved into the layer packages (0.3): each still imports for one release, with a
DeprecationWarning that names the new path (CHANGELOG lists the moves)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

REMOVED_IN = "0.4"

# old path -> the modules its names now live in (first one is the module's new home)
MOVED: dict[str, tuple[str, ...]] = {
    "vaelab.errors": ("vaelab.core.errors",),
    "vaelab.store": ("vaelab.core.store",),
    "vaelab.losses": ("vaelab.models.losses",),
    "vaelab.config": ("vaelab.runs.config", "vaelab.runs.presets"),
    "vaelab.config.presets": ("vaelab.runs.presets",),
    "vaelab.run": ("vaelab.runs.run", "vaelab.study.folders"),
    "vaelab.checkpoint": ("vaelab.runs.checkpoint", "vaelab.core.device"),
    "vaelab.export": ("vaelab.exports.bundle",),
    "vaelab.onnx_export": ("vaelab.exports.onnx",),
    "vaelab.optim": ("vaelab.training.optim",),
    "vaelab.train": (
        "vaelab.training.loop",
        "vaelab.training.epochs",
        "vaelab.training.budget",
        "vaelab.runs.checkpoint",
        "vaelab.core.device",
    ),
    "vaelab.train.budget": ("vaelab.training.budget",),
    "vaelab.train.epochs": ("vaelab.training.epochs",),
    "vaelab.multirun": ("vaelab.training.multirun",),
    "vaelab.distributed": ("vaelab.training.distributed",),
    "vaelab.tracking": ("vaelab.training.tracking",),
    "vaelab.classifier": ("vaelab.training.classifier",),
    "vaelab.evaluate": ("vaelab.evaluation.evaluate",),
    "vaelab.metrics": ("vaelab.evaluation.metrics",),
    "vaelab.disentangle": ("vaelab.evaluation.disentangle",),
    "vaelab.codes": ("vaelab.evaluation.codes",),
    "vaelab.generate": ("vaelab.evaluation.generate",),
    "vaelab.scoring": ("vaelab.evaluation.scoring",),
    "vaelab.latent": ("vaelab.exploration.latent",),
    "vaelab.explorer": ("vaelab.exploration.explorer",),
    "vaelab.plots": ("vaelab.exploration.plots",),
    "vaelab.findings": ("vaelab.study.findings",),
    "vaelab.cli": ("vaelab.app.cli",),
    "vaelab.cli.parsers": ("vaelab.app.parsers",),
    "vaelab.cli.commands": ("vaelab.app.commands",),
    "vaelab.serve": ("vaelab.app.serve",),
}
_PACKAGES = {old.rsplit(".", 1)[0] for old in MOVED if old.count(".") > 1}  # old paths that had submodules


class _Loader(importlib.abc.Loader):
    def exec_module(self, module: types.ModuleType) -> None:
        old, homes = module.__name__, MOVED[module.__name__]
        warnings.warn(
            f"{old} moved to {homes[0]}; the old path goes in vaelab {REMOVED_IN}",
            DeprecationWarning,
            stacklevel=2,  # the importing line: warnings skips importlib's own frames when it counts
        )
        if old in _PACKAGES:
            module.__path__ = []

        def forward(name: str):
            for home in homes:
                found = importlib.import_module(home)
                if hasattr(found, name):
                    return getattr(found, name)
            raise AttributeError(f"module {old!r} (now {homes[0]}) has no attribute {name!r}")

        module.__getattr__ = forward
        module.__doc__ = f"Moved to {homes[0]} (this path goes in vaelab {REMOVED_IN})."


class Finder(importlib.abc.MetaPathFinder):
    """Finds the old paths in MOVED (and nothing else)."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=fullname in _PACKAGES)


def install() -> None:
    """Put the finder on sys.meta_path once (importing vaelab does)."""
    if not any(isinstance(f, Finder) for f in sys.meta_path):
        sys.meta_path.append(Finder())

"""A run directory: where its config, checkpoint, metrics and evaluations live, and its model, loaded once."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from vaelab.core.store import (
    CHECKPOINT,
    CONFIG,
    ERROR,
    EVAL,
    LEGACY_CHECKPOINT,
    METRICS,
    RUNNING,
    SNAPSHOTS,
    check_run_dir,
    read_json_object,
    read_jsonl,
)
from vaelab.runs.checkpoint import load_model
from vaelab.runs.config import TrainConfig, from_dict

_LOADED: OrderedDict[tuple, tuple] = OrderedDict()  # (path, checkpoint mtime, device) -> (cfg, model, checkpoint)
_KEEP = 8  # models kept per process: a study report walks many runs, and each is read once per version


def snapshot_name(fraction: float) -> str:
    """A snapshot's fraction in its file name, exactly: two decimals where they say it all (at-0.25, the name it has
    always had), else the float's shortest exact form (at-0.251), so that no two fractions share a file."""
    return f"{fraction:.2f}" if float(f"{fraction:.2f}") == fraction else repr(float(fraction))


class Run:
    """One run directory. Every module that needs a run's files or model goes through this class, so the layout
    is written down once and a model is loaded once per process (until its checkpoint changes)."""

    def __init__(self, path: str | Path, check: bool = True):
        """check=False names a run directory that may not hold a run yet (a study's cell before it starts)."""
        self.path = check_run_dir(Path(path)) if check else Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def legacy_checkpoint_path(self) -> Path:
        """vaelab 0.1's pickled checkpoint, refused unless converted (vaelab convert)."""
        return self.path / LEGACY_CHECKPOINT

    def holds_run(self) -> bool:
        """Whether training has started here: a config or a checkpoint (current or 0.1's) is present."""
        return any(p.exists() for p in (self.config_path, self.checkpoint_path, self.legacy_checkpoint_path))

    @property
    def error_path(self) -> Path:
        """Why a study's cell failed (written by the study, removed when it runs again)."""
        return self.path / ERROR

    @property
    def running_path(self) -> Path:
        """Present while a study's worker runs the cell: its pid, host and start."""
        return self.path / RUNNING

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def eval_path(self, dataset: str | None = None) -> Path:
        """eval.json, or eval-<dataset>.json for an evaluation on another dataset (`vaelab evaluate --on`)."""
        return self.path / (EVAL if dataset is None or dataset == self.config.dataset else f"eval-{dataset}.json")

    def snapshot_path(self, fraction: float) -> Path:
        """The model kept at `fraction` of the budget (TrainConfig.snapshots)."""
        return self.path / SNAPSHOTS / f"at-{snapshot_name(fraction)}.safetensors"

    def snapshot_eval_path(self, fraction: float) -> Path:
        return self.path / SNAPSHOTS / f"eval-at-{snapshot_name(fraction)}.json"

    def snapshot_eval(self, fraction: float) -> dict | None:
        path = self.snapshot_eval_path(fraction)
        return read_json_object(path, "evaluation results") if path.is_file() else None

    @property
    def config(self) -> TrainConfig:
        return from_dict(read_json_object(self.config_path, "a run config"))

    @property
    def metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path)

    def eval(self, dataset: str | None = None) -> dict | None:
        path = self.eval_path(dataset)
        return read_json_object(path, "evaluation results") if path.is_file() else None

    def load(self, device="cpu", weights: str = "model") -> tuple:
        """(config, model in eval mode, checkpoint dict), cached while the checkpoint file is unchanged. `weights`:
        "model" (what evaluation reads: the EMA or the best epoch) or "train_model" (the raw latest weights)."""
        stamp = self.checkpoint_path.stat().st_mtime_ns if self.checkpoint_path.is_file() else None
        key = (str(self.path.resolve()), stamp, str(device), weights)
        if key not in _LOADED:
            _LOADED[key] = load_model(self.path, device, weights)
            while len(_LOADED) > _KEEP:
                _LOADED.popitem(last=False)
        _LOADED.move_to_end(key)
        cfg, model, ckpt = _LOADED[key]
        return cfg, model.eval(), ckpt

    @property
    def model(self):
        return self.load()[1]

    @property
    def classes(self) -> list[str]:
        return list(self.load()[2]["classes"])

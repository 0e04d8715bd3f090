"""The comparative study: grids of config overrides, resumable parallel execution, aggregated results."""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import VaelabError
from .config import TrainConfig, coerce, config_diff, from_dict, unknown_key_message
from .disentangle import METRICS as DISENTANGLEMENT
from .store import CONFIG, ERROR, EVAL, atomic_write_json, atomic_write_text, read_json, read_jsonl, METRICS

RUNNING = "RUNNING"
METRIC_COLUMNS = ["neg_elbo", "recon", "kl", "bpd_elbo", "iwae_nll", "bpd_iwae", "active_units", "psnr", "ssim",
                  "probe_accuracy", "probe_accuracy_untrained", "probe_accuracy_pca", "chance_accuracy", "knn_accuracy", "silhouette", "conditional_accuracy", "fd_prior", "fd_gmm",
                  "n_params", "kl_share_finest", *DISENTANGLEMENT]
INFO_COLUMNS = ["n_dims", "likelihood_discrete"]  # carried into results for units, never averaged
_FIELD_ORDER = [f.name for f in fields(TrainConfig)]


# ---------------------------------------------------------------- grid helpers (cf. disentanglement_lib hyperparams)

def sweep(name: str, values: Iterable[Any]) -> list[dict]:
    return [{name: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*sweeps)]


def zipit(*sweeps: list[dict]) -> list[dict]:
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise VaelabError(f"zip needs lists of equal length, got lengths {sorted(lengths)}")
    return [{k: v for d in combo for k, v in d.items()} for combo in zip(*sweeps)]


def chain(*sweeps: list[dict]) -> list[dict]:
    out: list[dict] = []
    for s in sweeps:
        out += [d for d in s if d not in out]
    return out


# ---------------------------------------------------------------- spec

@dataclass(frozen=True)
class Cell:
    run_id: str
    config: TrainConfig
    overrides: dict


@dataclass(frozen=True)
class StudySpec:
    name: str
    base: dict
    sweeps: tuple[dict, ...]  # each {"grid": {k: [...]}, "zip": {k: [...]}, "base": {k: v}}
    cells: tuple[Cell, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "sweep": list(self.sweeps)}


_TOP_KEYS = ("name", "base", "grid", "zip", "sweep")
_SWEEP_KEYS = ("grid", "zip", "base")


def _line_of(text: str | None, key: str) -> int | None:
    if not text:
        return None
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*-?\s*\[*\s*['\"]?{re.escape(key)}['\"]?\s*(\]|=|:)", line):
            return i
    return None


def _fail(where: str, text: str | None, key: str | None, msg: str) -> VaelabError:
    line = _line_of(text, key) if key else None
    return VaelabError(f"{where}:{line}: {msg}" if line else f"{where}: {msg}")


def _key_in(msg: str, keys: Iterable[str]) -> str | None:
    for k in keys:
        if re.search(rf"\b{re.escape(k)}\b", msg):
            return k
    return None


def _format_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_id(cfg: TrainConfig, keys: list[str]) -> str:
    """A readable, stable directory name from the values of the keys the study varies."""
    return "__".join(f"{k}-{_format_value(getattr(cfg, k))}" for k in keys).replace("/", "_") or "run"


def parse_spec(d: dict, where: str = "<spec>", text: str | None = None) -> StudySpec:
    """Validate a spec mapping and expand it into cells; errors name the file and the line that is wrong."""
    if not isinstance(d, dict):
        raise VaelabError(f"{where}: a study spec must be a table/mapping")
    for k in d:
        if not isinstance(k, str) or k not in _TOP_KEYS:
            raise _fail(where, text, str(k), unknown_key_message(str(k), _TOP_KEYS).replace("field", "key"))
    if not any(d.get(k) for k in ("grid", "zip", "sweep")):
        raise VaelabError(f"{where}: the spec defines no runs (give a [grid], a [zip] or [[sweep]] tables)")
    for k in ("base", "grid", "zip"):
        if not isinstance(d.get(k) or {}, dict):
            raise _fail(where, text, k, f"'{k}' must be a table of config fields, got {type(d[k]).__name__}")
    if not isinstance(d.get("sweep") or [], list):
        raise _fail(where, text, "sweep", f"'sweep' must be a list of tables ([[sweep]]), got {type(d['sweep']).__name__}")
    if not isinstance(d.get("name", ""), str):
        raise _fail(where, text, "name", "'name' must be a string")
    base = dict(d.get("base") or {})
    sweeps = list(d.get("sweep") or [])
    if "grid" in d or "zip" in d or not sweeps:
        sweeps.insert(0, {"grid": d.get("grid") or {}, "zip": d.get("zip") or {}})
    for k, v in base.items():
        try:
            coerce(k, v)
        except VaelabError as e:
            raise _fail(where, text, k, f"[base] {e}") from None
    named: list[str] = []
    raw_cells: list[dict] = []
    for s in sweeps:
        if not isinstance(s, dict):
            raise VaelabError(f"{where}: each [[sweep]] must be a table")
        for k in s:
            if not isinstance(k, str) or k not in _SWEEP_KEYS:
                raise _fail(where, text, str(k), unknown_key_message(str(k), _SWEEP_KEYS).replace("field", "key"))
            if not isinstance(s[k] or {}, dict):
                raise _fail(where, text, k, f"[[sweep]] '{k}' must be a table of config fields")
        parts = []
        for kind in ("grid", "zip"):
            table = s.get(kind) or {}
            sweeps_of_kind = []
            for k, values in table.items():
                if not isinstance(values, list) or not values:
                    raise _fail(where, text, k, f"[{kind}] {k} must be a non-empty list")
                for v in values:
                    try:
                        coerce(k, v)
                    except VaelabError as e:
                        raise _fail(where, text, k, f"[{kind}] {e}") from None
                sweeps_of_kind.append(sweep(k, values))
                named.append(k)
            if sweeps_of_kind:
                parts.append(product(*sweeps_of_kind) if kind == "grid" else zipit(*sweeps_of_kind))
        sbase = s.get("base") or {}
        for k, v in sbase.items():
            try:
                coerce(k, v)
            except VaelabError as e:
                raise _fail(where, text, k, f"[sweep.base] {e}") from None
        named += list(sbase)
        raw_cells += [{**sbase, **c} for c in (product(*parts) if parts else [{}])]
    keys = [k for k in _FIELD_ORDER if k in named]
    cells, seen = [], set()
    for overrides in raw_cells:
        try:
            cfg = from_dict({**base, **overrides})
        except VaelabError as e:
            key = _key_in(str(e), list(overrides) + list(base))
            raise _fail(where, text, key, f"{e} (in run {overrides})") from None
        rid = run_id(cfg, keys)
        if rid not in seen:
            seen.add(rid)
            cells.append(Cell(rid, cfg, {k: getattr(cfg, k) for k in keys}))
    name = d.get("name") or Path(where).stem
    return StudySpec(str(name), base, tuple(sweeps), tuple(cells))


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VaelabError(f"{path}: not a text file (study specs are UTF-8 TOML, YAML or JSON)") from None
    except OSError as e:
        raise VaelabError(f"{path}: cannot read study spec ({e.strerror or e})") from None
    if path.suffix == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise VaelabError(f"{path}: invalid TOML ({e})") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise VaelabError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    elif path.suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise VaelabError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    else:
        raise VaelabError(f"{path}: study specs are .toml, .yaml/.yml or .json")
    return parse_spec(d, str(path), text)


# The study's reference latent size for each dataset's beta sweep.
BETA_LATENT = {"fashion-mnist": 16, "cifar10": 128}
PRESETS: dict[str, dict] = {
    "seed": {  # the full comparative study
        "name": "seed",
        "base": {"epochs": 40, "iwae_samples": 100},
        "sweep": [
            {"grid": {"dataset": ["fashion-mnist", "cifar10"], "latent_dim": [2, 4, 8, 16, 32, 64, 128],
                      "seed": [0, 1, 2]}},
            {"zip": {"dataset": list(BETA_LATENT), "latent_dim": list(BETA_LATENT.values())},
             "grid": {"beta": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "seed": [0, 1, 2]}},
        ],
    },
    "quick": {  # the same shape, reduced to finish in minutes on 2 CPU cores
        "name": "quick",
        "base": {"epochs": 4, "train_size": 6000, "val_size": 1000, "test_size": 1000, "iwae_samples": 20},
        "sweep": [
            {"grid": {"dataset": ["fashion-mnist", "cifar10"], "latent_dim": [2, 8, 32], "seed": [0, 1, 2]}},
            {"zip": {"dataset": ["fashion-mnist", "cifar10"], "latent_dim": [8, 32]},
             "grid": {"beta": [0.5, 1.0, 4.0], "seed": [0, 1, 2]}},
        ],
    },
}


# The study's span trained as far as two hours on 2 CPU cores allow (the time-to-quality issue): both datasets, full
# training sets, latent 2..128 at beta = 1 and beta 0.5..16 at the reference latent size, 3 seeds = 45 runs. Each run
# has a wall-clock budget (Fashion-MNIST 150 s, CIFAR-10 210 s, one core each with --jobs 2 --threads 1) with the
# learning rate cosine-annealed over it, bf16 autocast, and early stopping on the validation ELBO that keeps the best
# epoch; results.csv says per run which epoch was best and whether it stopped early. IWAE with K = 20 over the whole
# test set (K = 100 would cost 140-220 s of one core per run). Cut to fit: latent 4 and 64 and beta 2 and 8 of the
# `seed` grid, and training length (a few epochs; the summary states how far from convergence each cell stopped).
_STD_BASE = {"bf16": True, "cosine": True, "patience": 3, "min_improvement": 0.001, "epochs": 10000,
             "iwae_samples": 20}
_STD_BUDGET = {"fashion-mnist": 150.0, "cifar10": 210.0}
PRESETS["standard"] = {
    "name": "standard",
    "base": _STD_BASE,
    "sweep": [
        *({"grid": {"latent_dim": [2, 8, 32, 128], "seed": [0, 1, 2]},
           "base": {"dataset": d, "time_budget": t}} for d, t in _STD_BUDGET.items()),
        *({"grid": {"beta": [0.5, 1.0, 4.0, 16.0], "seed": [0, 1, 2]},
           "base": {"dataset": d, "latent_dim": BETA_LATENT[d], "time_budget": t}} for d, t in _STD_BUDGET.items()),
    ],
}

# The model families of the model-parts issue against the reference VAE, at the `quick` sizes (a CPU preset: four
# epochs say which way each family moves the numbers, not where it converges). Each family is one [[sweep]] so
# that combinations the config refuses (IAF with the VampPrior) never appear.
_FAMILY_GRID = {"dataset": ["fashion-mnist", "cifar10"], "seed": [0, 1, 2]}
PRESETS["families"] = {
    "name": "families",
    "base": {"epochs": 4, "train_size": 6000, "val_size": 1000, "test_size": 1000, "iwae_samples": 50,
             "latent_dim": 16},
    "sweep": [
        {"grid": {**_FAMILY_GRID, "posterior": ["gaussian", "iaf"]}},
        {"grid": _FAMILY_GRID, "base": {"prior": "vamp"}},
        {"grid": _FAMILY_GRID, "base": {"objective": "free_bits", "free_bits": 0.25}},
        {"grid": _FAMILY_GRID, "base": {"kl_schedule": "cyclical"}},
    ],
}


# The networks at an equal wall-clock budget per run (the deeper-models issue): the reference conv net, a residual
# net and the hierarchical VAE, all with the mixture-of-logistics decoder and the same recipe. A CPU-sized preset:
# five minutes a run; raise time_budget (and the widths) on a GPU.
_ARCH_GRID = {"dataset": ["fashion-mnist", "cifar10"], "seed": [0, 1]}
PRESETS["architectures"] = {
    "name": "architectures",
    "base": {"likelihood": "dmol", "time_budget": 300.0, "epochs": 10000, "val_size": 1000, "test_size": 1000,
             "iwae_samples": 20, "cosine": True, "ema": 0.99, "lr": 2e-3, "batch_size": 64},
    "sweep": [
        {"grid": {**_ARCH_GRID, "arch": ["conv"]}, "base": {"latent_dim": 32}},
        {"grid": _ARCH_GRID, "base": {"arch": "resnet", "width": 32, "depth": 1, "latent_dim": 32}},
        {"grid": _ARCH_GRID, "base": {"arch": "hierarchical", "width": 32, "depth": 1, "latent_dim": 8,
                                      "latent_groups": 1}},
    ],
}


# Disentanglement measured (the disentanglement issue): four objectives of the objective registry, each at three
# values of its main weight, three seeds, on shapes2d with the disentanglement studies' conv4 net and a Bernoulli
# decoder (Locatello et al. 2019's setup, much shorter). Sized for one hour on 2 CPU cores: 75 s of training a run
# (about 60,000 images; their models saw 300,000 steps of 64), metrics from about 63,000 encodings (disentangle.Sizes).
# Cut to get there: DIP-VAE-II and controlled capacity (implemented, tested) are not in the grid.
_DIS_BASE = {"dataset": "shapes2d", "arch": "conv4", "likelihood": "bernoulli", "latent_dim": 10, "batch_size": 64,
             "lr": 1e-3, "time_budget": 75.0, "epochs": 10000, "train_size": 100000, "val_size": 1000,
             "test_size": 1000, "iwae_samples": 10}
_SEEDS = {"seed": [0, 1, 2]}
PRESETS["disentangle"] = {
    "name": "disentangle",
    "base": _DIS_BASE,
    "sweep": [
        {"grid": {"beta": [1.0, 4.0, 16.0], **_SEEDS}},
        {"grid": {"beta": [2.0, 6.0, 10.0], **_SEEDS}, "base": {"objective": "beta_tcvae"}},
        {"grid": {"factor_gamma": [10.0, 30.0, 100.0], **_SEEDS}, "base": {"objective": "factor_vae"}},
        {"grid": {"dip_lambda": [1.0, 5.0, 20.0], **_SEEDS}, "base": {"objective": "dip_vae_i"}},
    ],
}


def preset_spec(name: str) -> StudySpec:
    if name not in PRESETS:
        raise VaelabError(f"unknown study preset '{name}' (known: {', '.join(PRESETS)})")
    return parse_spec(PRESETS[name], f"preset:{name}")


# ---------------------------------------------------------------- running cells

def run_cell(run_dir: str | Path, config: dict, data_dir: str | None = None, threads: int | None = None,
             gpu: int | None = None) -> str:
    """Train and evaluate one cell; 'done' if it already was. Failures are recorded in error.json, not raised."""
    import torch

    from .evaluate import evaluate
    from .train import train

    run_dir = Path(run_dir)
    if (run_dir / EVAL).is_file():
        return "done"
    if threads:
        torch.set_num_threads(threads)
        # numpy's and scipy's BLAS too (the latent probes' scikit-learn fits): by default each worker's BLAS takes
        # every core, and with --jobs 2 their spinning threads made the probes 20x slower (47 s instead of 2.4 s)
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    if gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(gpu % torch.cuda.device_count())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RUNNING, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    try:
        cfg = from_dict(config)
        train(cfg, run_dir, data_dir=data_dir, resume=True, progress=False)
        evaluate(run_dir, data_dir=data_dir)
        (run_dir / ERROR).unlink(missing_ok=True)
        return "done"
    except Exception as e:  # one failing cell must not stop the others: record it and move on
        atomic_write_json(run_dir / ERROR, {"error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                                            "type": type(e).__name__, "traceback": traceback.format_exc()})
        return "failed"
    finally:
        (run_dir / RUNNING).unlink(missing_ok=True)


def _pid_alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: trust the marker
    try:
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def cell_status(run_dir: Path) -> str:
    if (run_dir / EVAL).is_file():
        return "done"
    if (run_dir / RUNNING).is_file():
        try:
            return "running" if _pid_alive(read_json(run_dir / RUNNING)) else "interrupted"
        except VaelabError:
            return "interrupted"
    if (run_dir / ERROR).is_file():
        return "failed"
    if (run_dir / METRICS).is_file():
        return "interrupted"
    return "pending"


def _write_study_json(out: Path, spec: StudySpec) -> None:
    atomic_write_json(out / "study.json", {**spec.to_dict(),
                                           "cells": [{"run_id": c.run_id, "overrides": c.overrides,
                                                      "config": c.config.to_dict()} for c in spec.cells]})


def stale_fields(run_dir: Path, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The fields in which a run directory's stored config differs from the cell's: {field: (stored, wanted)}.

    Empty for a run not started yet. A stored config that no longer validates counts as differing in full."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        stored = from_dict(read_json(path))
    except VaelabError as e:
        return {CONFIG: (str(e), "a valid config")}
    return config_diff(stored, cfg)


def _set_aside(run_dir: Path) -> Path:
    """Move a stale run out of the way, never deleting it: runs/<id>.stale-<n>."""
    n = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.stale-{n}")).exists():
        n += 1
    run_dir.rename(dest)
    return dest


def run(spec: StudySpec | str | Path, out: str | Path, jobs: int = 1, executor: str = "local",
        address: str | None = None, data_dir: str | None = None, retrain_stale: bool = False,
        gpus_per_run: float = 0.0, threads: int | None = None, together: bool = False) -> dict[str, int]:
    """Run (or resume) every cell of a study into out/runs/<run-id>/; returns counts by final status.

    threads: CPU threads each run uses (default: the machine's cores shared evenly among the jobs).
    together: first train the not-yet-started cells that differ only in seed and beta as one stacked model each
    (vaelab.multirun: small models fill a GPU); every cell is then evaluated (and any other trained) as usual.

    One process at a time works on a study directory (a lock; a second one exits with a one-line message).
    A cell whose run directory was trained with another config is an error naming the cell and the fields,
    unless retrain_stale: then the old directory is set aside (runs/<id>.stale-N) and the cell trained anew."""
    from .store import FolderLock, ensure_writable_dir, remove_stale_temps

    if not isinstance(spec, StudySpec):
        spec = load_spec(spec) if Path(spec).suffix else preset_spec(str(spec))
    if not 1 <= jobs <= 1024:
        raise VaelabError(f"--jobs must be in 1..1024, got {jobs}")
    if threads is not None and not 1 <= threads <= 1024:
        raise VaelabError(f"--threads must be in 1..1024, got {threads}")
    if not 0 <= gpus_per_run <= 64:
        raise VaelabError(f"--gpus-per-run must be in 0..64, got {gpus_per_run}")
    if executor not in ("local", "ray"):
        raise VaelabError(f"unknown executor '{executor}' (known: local, ray)")
    out = Path(out)
    if (out / "study.json").is_file():
        old = read_json(out / "study.json")
        if not isinstance(old, dict) or old.get("name") != spec.name:
            name = old.get("name") if isinstance(old, dict) else "?"
            raise VaelabError(f"{out}: holds study '{name}', not '{spec.name}'; choose another --out")
    stale = {c.run_id: d for c in spec.cells if (d := stale_fields(out / "runs" / c.run_id, c.config))}
    if stale and not retrain_stale:
        rid, diff = next(iter(stale.items()))
        fields_ = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        more = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
        raise VaelabError(f"{out}: run {rid} was trained with another config ({fields_}){more}; use another --out, "
                          "or pass --retrain-stale to set the old runs aside (runs/<id>.stale-N) and train them anew")
    out = ensure_writable_dir(out)
    with FolderLock(out, "this study"):
        for rid in stale:
            _set_aside(out / "runs" / rid)
        remove_stale_temps(out)  # a killed driver's half-written study.json/results.csv; run dirs clean their own
        _write_study_json(out, spec)
        todo = [c for c in spec.cells if cell_status(out / "runs" / c.run_id) != "done"]
        args = [(str(out / "runs" / c.run_id), c.config.to_dict()) for c in todo]
        if together:
            _train_groups(todo, out, data_dir)
        if executor == "ray":
            _run_ray(args, address, data_dir, gpus_per_run)
        elif jobs == 1 or len(args) <= 1:
            from tqdm.auto import tqdm

            for run_dir, cfg in tqdm(args, desc=spec.name, unit="run", disable=None):
                run_cell(run_dir, cfg, data_dir, threads)
        else:
            _run_pool(args, jobs, data_dir, threads)
        write_results(out)
    counts: dict[str, int] = {}
    for c in spec.cells:
        s = cell_status(out / "runs" / c.run_id)
        counts[s] = counts.get(s, 0) + 1
    return counts


def _train_groups(todo: list, out: Path, data_dir: str | None) -> None:
    """Train each group of not-yet-started cells that can share a stacked model (multirun.groups) together. A group
    that fails leaves its checkpoints; run_cell then resumes (or records the failure of) each cell on its own."""
    from . import multirun
    from .train import CHECKPOINT, CONFIG

    fresh = [c for c in todo if not ((out / "runs" / c.run_id / CHECKPOINT).exists()
                                     or (out / "runs" / c.run_id / CONFIG).exists())]
    for group in multirun.groups([c.config for c in fresh]):
        cells = [fresh[i] for i in group]
        try:
            multirun.train_together([c.config for c in cells], [out / "runs" / c.run_id for c in cells], data_dir)
        except VaelabError as e:
            print(f"vaelab: {len(cells)} runs trained together stopped ({e}); each goes on alone", file=sys.stderr)


def _worker_init() -> None:
    import signal
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops the workers
    # tqdm's default lock is a multiprocessing semaphore; a worker ended by the driver would leak it (and the
    # resource tracker would print a warning). One process, one thread each: a thread lock does.
    tqdm.set_lock(threading.RLock())


def _run_pool(args: list[tuple[str, dict]], jobs: int, data_dir: str | None, threads: int | None = None) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch
    from tqdm.auto import tqdm

    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch thread pools or CUDA state
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init)
    try:
        gpus = torch.cuda.device_count()
        futures = [pool.submit(run_cell, run_dir, cfg, data_dir, threads, i if gpus else None)
                   for i, (run_dir, cfg) in enumerate(args)]
        for f in tqdm(as_completed(futures), total=len(futures), unit="run", disable=None):
            f.result()
    except BaseException:
        # Ctrl-C (or any failure of the driver): schedule nothing more and end the workers now. Their runs stop
        # mid-epoch; checkpoints are atomic, so the next 'vaelab study' resumes them from the last epoch.
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(timeout=10)
        raise
    pool.shutdown(wait=True)


def _check_reachable(address: str | None) -> None:
    """Ray retries an unreachable host:port for minutes; fail in seconds with one line instead."""
    m = re.fullmatch(r"(?:ray://)?([^:/]+):(\d+)", address or "")
    if not m:
        return  # 'auto', 'local' or a form Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as e:
        raise VaelabError(f"cannot reach a Ray cluster at {address} ({e.strerror or e})") from None


def ray_options(gpus_per_run: float) -> dict:
    """Resources each cell asks Ray for: one CPU and, on a GPU cluster, its share of a GPU (Ray then sets
    CUDA_VISIBLE_DEVICES per task, so cells spread over the GPUs instead of all landing on cuda:0)."""
    return {"num_cpus": 1, "num_gpus": gpus_per_run}


def _run_ray(args: list[tuple[str, dict]], address: str | None, data_dir: str | None, gpus_per_run: float = 0.0) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from offline machines
    try:
        import ray
    except ImportError:
        raise VaelabError("the ray executor needs Ray: pip install 'vaelab[ray]'") from None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise VaelabError(f"cannot connect to a Ray cluster at {address or 'auto'} ({str(e).splitlines()[0]})") from None
    remote = ray.remote(**ray_options(gpus_per_run))(run_cell)
    ray.get([remote.remote(run_dir, cfg, data_dir, 1) for run_dir, cfg in args])


# ---------------------------------------------------------------- results

def collect(out: str | Path):
    """One row per cell from the run directories (never cached, so never stale)."""
    import pandas as pd

    out = Path(out)
    study = read_json(out / "study.json")
    cells = study.get("cells") if isinstance(study, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) and {"run_id", "config", "overrides"} <= set(c)
                                              for c in cells):
        raise VaelabError(f"{out / 'study.json'}: damaged (no valid 'cells'); run the study command again to rewrite it")
    rows = []
    for c in cells:
        d = out / "runs" / c["run_id"]
        cfg = c["config"]
        row: dict[str, Any] = {"run_id": c["run_id"], "status": cell_status(d), **c["overrides"],
                               **{k: cfg[k] for k in ("dataset", "latent_dim", "beta", "seed") if k not in c["overrides"]}}
        hist = read_jsonl(d / METRICS)
        row["epochs_done"] = len(hist)
        row["train_seconds"] = sum(h["seconds"] for h in hist) if hist else None
        row["images_per_s"] = sum(h["images_per_s"] for h in hist) / len(hist) if hist else None
        full = [h["seconds"] for h in hist if not h.get("partial")]  # a time budget's last epoch may be cut short
        row["seconds_per_epoch"] = sum(full) / len(full) if full else None
        # how far from convergence: the last epoch whose validation ELBO improved (early stopping records it)
        row["best_epoch"] = hist[-1].get("best_epoch") if hist else None
        row["stopped_early"] = bool(hist and hist[-1].get("stopped_early"))
        val = [h["val_neg_elbo"] for h in hist if "val_neg_elbo" in h]
        # the last epoch's relative change of the validation negative ELBO (< 0: still improving)
        row["last_val_change"] = (val[-1] - val[-2]) / abs(val[-2]) if len(val) > 1 and val[-2] else None
        if (d / EVAL).is_file():
            ev = read_json(d / EVAL)
            ev = {**ev, **(ev.get("disentanglement") or {})}  # a factor dataset's scores sit in their own block
            row.update({k: ev.get(k) for k in METRIC_COLUMNS + INFO_COLUMNS})
        if row["status"] == "failed":
            err = read_json(d / ERROR)
            row["error"] = err.get("error") if isinstance(err, dict) else "damaged error.json"
        elif row["status"] == "done" and (diff := stale_fields(d, from_dict(cfg))):
            row["status"] = "stale"  # trained with another config than the spec's: never mixed into results
            row["error"] = "trained with another config: " + ", ".join(diff)
        rows.append(row)
    return pd.DataFrame(rows)


def write_results(out: str | Path):
    out = Path(out)
    df = collect(out)
    atomic_write_text(out / "results.csv", df.to_csv(index=False))
    try:
        import io

        import pyarrow  # noqa: F401

        from .store import atomic_write_bytes

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(out / "results.parquet", buf.getvalue())
    except ImportError:
        pass
    return df


def varied_keys(df, core: list[str]) -> list[str]:
    """`core` plus every other config field the study varies, except the seed: the groups a mean over seeds
    may pool. (A grid over likelihoods must not average a Bernoulli run with a logistic one.)"""
    extra = [k for k in _FIELD_ORDER if k in df and k not in core and k != "seed" and df[k].nunique(dropna=False) > 1]
    return core + extra


def summarize(df, by: list[str], metrics: list[str] | None = None):
    """mean, std and n over seeds of each metric, grouped by `by` and every other varied key (done cells only)."""
    metrics = [m for m in (metrics or METRIC_COLUMNS) if m in df and df[m].notna().any()]
    done = df[df["status"] == "done"]
    if done.empty:
        return done
    by = varied_keys(done, by)
    g = done.groupby(by, sort=True, dropna=False)[metrics]
    std, n = g.std(), g.count()
    from scipy import stats

    # The 95 % t interval of the mean over seeds: what the plots' error bars show (NaN for a single seed).
    half = std.mul(stats.t.ppf(0.975, (n - 1).where(n > 1)), axis=0) / np.sqrt(n)
    res = g.mean().join(std.add_suffix("_std")).join(half.add_suffix("_ci")).join(g.size().rename("n"))
    return res.reset_index()


def latent_rows(df):
    """The finished runs at beta = 1, one row per run (what the findings test)."""
    return df[(df["status"] == "done") & (df["beta"] == 1.0)]


def beta_rows(df):
    """The finished runs of each dataset's beta sweep: at the latent size with the most distinct betas."""
    import pandas as pd

    parts = []
    for ds, sub in df[df["status"] == "done"].groupby("dataset"):
        counts = sub.groupby("latent_dim")["beta"].nunique()
        if counts.empty or counts.max() < 2:
            continue
        parts.append(sub[sub["latent_dim"] == counts.idxmax()])
    return pd.concat(parts) if parts else df.iloc[0:0]


def latent_table(df):
    """Per dataset x latent_dim (x any other varied key) at beta = 1."""
    return summarize(latent_rows(df), ["dataset", "latent_dim"])


def beta_table(df):
    """Per dataset x beta, at each dataset's beta-sweep latent size."""
    import pandas as pd

    rows = beta_rows(df)
    return summarize(rows, ["dataset", "latent_dim", "beta"]) if len(rows) else pd.DataFrame()


def fmt_num(v: float, digits: int = 4) -> str:
    """Readable numbers: 16,150 rather than 1.615e+04."""
    return f"{v:,.0f}" if abs(v) >= 10 ** digits else f"{v:.{digits}g}"


def format_table(t, metrics: list[str] | None = None) -> str:
    """Render a summary as fixed-width text with mean ± std."""
    if t is None or len(t) == 0:
        return "(no finished runs yet)"
    keys = [c for c in _FIELD_ORDER if c in t and c != "seed"]
    metrics = [m for m in (metrics or METRIC_COLUMNS) if m in t]
    header = keys + metrics + ["n"]
    rows = []
    for _, r in t.iterrows():
        cells = [_format_value(r[k]) for k in keys]
        for m in metrics:
            std = r.get(f"{m}_std")
            cells.append(fmt_num(r[m]) + (f" ± {fmt_num(std, 2)}" if std is not None and std == std else ""))
        cells.append(str(int(r["n"])))
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(header)]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def status_text(out: str | Path) -> tuple[str, dict[str, int]]:
    df = write_results(out)
    counts = df["status"].value_counts().to_dict()
    cols = [c for c in df.columns if c not in ("error",) and c in
            ["run_id", "status", "epochs_done", "neg_elbo", "bpd_elbo", "active_units"]]
    lines = [f"study {read_json(Path(out) / 'study.json')['name']}: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f" of {len(df)}", "",
             df[cols].to_string(index=False)]
    if "error" in df and df["error"].notna().any():
        lines += ["", "failed or stale runs:"] + [f"  {r.run_id}: {r.error}" for r in df[df["error"].notna()].itertuples()]
    short = ["neg_elbo", "recon", "kl", "bpd_elbo", "active_units"]
    lines += ["", "by latent_dim (beta = 1), mean ± std over seeds:", format_table(latent_table(df), short)]
    bt = beta_table(df)
    if len(bt):
        lines += ["", "by beta, mean ± std over seeds:", format_table(bt, short)]
    return "\n".join(lines), counts

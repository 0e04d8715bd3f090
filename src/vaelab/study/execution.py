"""Running a study: each cell trained and evaluated once (resumable), on a process pool, a Ray cluster, or stacked
with vaelab.training.multirun; stale cells set aside, bad specs refused before any cell starts."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from vaelab import data as vdata
from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    FolderLock,
    atomic_write_json,
    ensure_writable_dir,
    remove_stale_temps,
)
from vaelab.evaluation.evaluate import evaluate, evaluate_snapshots
from vaelab.runs.config import from_dict
from vaelab.runs.run import Run
from vaelab.study.folders import Study
from vaelab.study.presets import preset_spec
from vaelab.study.results import cell_status, stale_fields, write_results
from vaelab.study.spec import StudySpec, load_spec
from vaelab.training import multirun, processes
from vaelab.training.loop import train

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_cell(
    run_dir: str | Path,
    config: dict,
    data_dir: str | None = None,
    threads: int | None = None,
    gpu: int | None = None,
    nproc: int = 1,
) -> str:
    """Train and evaluate one cell; 'done' if it already was. Failures are recorded in error.json, not raised."""
    run_dir = Path(run_dir)
    run = Run(run_dir, check=False)
    if run.eval_path().is_file():
        return "done"
    if threads:
        torch.set_num_threads(threads)
        # numpy's and scipy's BLAS too (the latent probes' scikit-learn fits): by default each worker's BLAS takes
        # every core, and with --jobs 2 their spinning threads made the probes 20x slower (47 s instead of 2.4 s)
        threadpool_limits(threads)
    if gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(gpu % torch.cuda.device_count())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.running_path, {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    try:
        cfg = from_dict(config)
        if nproc > 1:  # one model on nproc processes (DistributedDataParallel), as `vaelab train --nproc`
            _train_on_processes(run, cfg, data_dir, nproc, threads)
        else:
            train(cfg, run_dir, data_dir=data_dir, resume=True, progress=False)
        evaluate_snapshots(run_dir, data_dir=data_dir)  # first: a cell with eval.json is done
        evaluate(run_dir, data_dir=data_dir)
        run.error_path.unlink(missing_ok=True)
        return "done"
    except Exception as e:  # one failing cell must not stop the others: record it and move on
        atomic_write_json(
            run.error_path,
            {
                "error": str(e).splitlines()[0] if str(e) else type(e).__name__,
                "type": type(e).__name__,
                "traceback": traceback.format_exc(),
            },
        )
        return "failed"
    finally:
        run.running_path.unlink(missing_ok=True)


def _train_on_processes(run: Run, cfg, data_dir: str | None, nproc: int, threads: int | None) -> None:
    """The cell trained on nproc processes, as `vaelab train --nproc` trains it."""
    threads = max(1, threads // nproc) if threads else None
    processes.launch(cfg, run.path, nproc, data_dir=data_dir, resume=run.holds_run(), threads=threads)


def check_datasets(spec: StudySpec, data_dir: str | None) -> None:
    """Refuse a spec whose datasets cannot be read before any cell starts (a typo in an npz path would otherwise
    fail every cell, each on its own): a user's file must exist and parse, a built-in one must be here or be
    fetchable or renderable."""
    for name in dict.fromkeys(c.config.dataset for c in spec.cells):
        the_spec = vdata.spec(name)
        if the_spec.download is None and the_spec.generate is None and vdata.locate(name, data_dir) is None:
            raise VaelabError(
                f"dataset {name}: not found in {', '.join(map(str, vdata.search_roots(data_dir)))}; "
                f"put {the_spec.what} there or pass --data-dir"
            )


def _write_study_json(out: Path, spec: StudySpec) -> None:
    atomic_write_json(
        Study(out).spec_path,
        {
            **spec.to_dict(),
            "cells": [{"run_id": c.run_id, "overrides": c.overrides, "config": c.config.to_dict()} for c in spec.cells],
        },
    )


def _set_aside(run_dir: Path) -> Path:
    """Move a stale run out of the way, never deleting it: runs/<id>.stale-<n>."""
    n = 1
    while (dest := run_dir.with_name(f"{run_dir.name}.stale-{n}")).exists():
        n += 1
    run_dir.rename(dest)
    return dest


def run(
    spec: StudySpec | str | Path,
    out: str | Path,
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    data_dir: str | None = None,
    retrain_stale: bool = False,
    gpus_per_run: float = 0.0,
    threads: int | None = None,
    together: bool = False,
    nproc_per_run: int = 1,
) -> dict[str, int]:
    """Run (or resume) every cell of a study into out/runs/<run-id>/; returns counts by final status.

    threads: CPU threads each run uses (default: the machine's cores shared evenly among the jobs).
    together: first train the not-yet-started cells that differ only in seed and beta as one stacked model each
    (vaelab.training.multirun: small models fill a GPU); every cell is then evaluated (and any other trained) as usual.
    nproc_per_run: each cell's one model trained on that many processes (DistributedDataParallel; on Ray the cell
    reserves that many CPUs), `threads` then shared among them.

    One process at a time works on a study directory (a lock; a second one exits with a one-line message).
    A cell whose run directory was trained with another config is an error naming the cell and the fields,
    unless retrain_stale: then the old directory is set aside (runs/<id>.stale-N) and the cell trained anew."""
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec) if Path(spec).suffix else preset_spec(str(spec))
    _check_options(jobs, threads, gpus_per_run, executor, nproc_per_run)
    check_datasets(spec, data_dir)
    out = Path(out)
    stale = _stale_cells(spec, out, retrain_stale)
    out = ensure_writable_dir(out)
    with FolderLock(out, "this study"):
        for rid in stale:
            _set_aside(Study(out).run_dir(rid))
        remove_stale_temps(out)  # a killed driver's half-written study.json/results.csv; run dirs clean their own
        _write_study_json(out, spec)
        todo = [c for c in spec.cells if cell_status(Study(out).run_dir(c.run_id)) != "done"]
        if together:
            _train_groups(todo, out, data_dir)
        _execute(
            spec.name,
            [(str(Study(out).run_dir(c.run_id)), c.config.to_dict()) for c in todo],
            executor,
            jobs,
            address,
            data_dir,
            gpus_per_run,
            threads,
            nproc_per_run,
        )
        write_results(out)
    counts: dict[str, int] = {}
    for c in spec.cells:
        s = cell_status(Study(out).run_dir(c.run_id))
        counts[s] = counts.get(s, 0) + 1
    return counts


def _execute(name: str, args: list, executor: str, jobs: int, address, data_dir, gpus_per_run, threads, nproc) -> None:
    """Every cell of `args` ((run_dir, config) pairs) trained and evaluated: on Ray, a pool, or one by one here."""
    if executor == "ray":
        _run_ray(args, address, data_dir, gpus_per_run, nproc)
    elif jobs == 1 or len(args) <= 1:
        for run_dir, cfg in tqdm(args, desc=name, unit="run", disable=None):
            run_cell(run_dir, cfg, data_dir, threads, nproc=nproc)
    else:
        _run_pool(args, jobs, data_dir, threads, nproc)


def _check_options(jobs: int, threads: int | None, gpus_per_run: float, executor: str, nproc: int = 1) -> None:
    if not 1 <= nproc <= 1024:
        raise VaelabError(f"--nproc-per-run must be in 1..1024, got {nproc}")
    if not 1 <= jobs <= 1024:
        raise VaelabError(f"--jobs must be in 1..1024, got {jobs}")
    if threads is not None and not 1 <= threads <= 1024:
        raise VaelabError(f"--threads must be in 1..1024, got {threads}")
    if not 0 <= gpus_per_run <= 64:
        raise VaelabError(f"--gpus-per-run must be in 0..64, got {gpus_per_run}")
    if executor not in ("local", "ray"):
        raise VaelabError(f"unknown executor '{executor}' (known: local, ray)")


def _stale_cells(spec: StudySpec, out: Path, retrain_stale: bool) -> dict:
    """The cells whose run directory holds another config (an error unless retrain_stale), after checking that
    `out` holds this study or none."""
    if Study(out).exists():
        old = Study(out).spec()
        if not isinstance(old, dict) or old.get("name") != spec.name:
            name = old.get("name") if isinstance(old, dict) else "?"
            raise VaelabError(f"{out}: holds study '{name}', not '{spec.name}'; choose another --out")
    stale = {c.run_id: d for c in spec.cells if (d := stale_fields(Study(out).run_dir(c.run_id), c.config))}
    if stale and not retrain_stale:
        rid, diff = next(iter(stale.items()))
        fields_ = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in diff.items())
        more = f" (and {len(stale) - 1} more cells)" if len(stale) > 1 else ""
        raise VaelabError(
            f"{out}: run {rid} was trained with another config ({fields_}){more}; use another --out, "
            "or pass --retrain-stale to set the old runs aside (runs/<id>.stale-N) and train them anew"
        )
    return stale


def _train_groups(todo: list, out: Path, data_dir: str | None) -> None:
    """Train each group of not-yet-started cells that can share a stacked model (multirun.groups) together. A group
    that fails leaves its checkpoints; run_cell then resumes (or records the failure of) each cell on its own."""
    fresh = [
        c
        for c in todo
        if not (Study(out).run(c.run_id).checkpoint_path.exists() or Study(out).run(c.run_id).config_path.exists())
    ]
    for group in multirun.groups([c.config for c in fresh]):
        cells = [fresh[i] for i in group]
        try:
            multirun.train_together([c.config for c in cells], [Study(out).run_dir(c.run_id) for c in cells], data_dir)
        except VaelabError as e:
            print(f"vaelab: {len(cells)} runs trained together stopped ({e}); each goes on alone", file=sys.stderr)


def _die_with(parent: int) -> None:
    """A worker must not outlive its driver: SIGTERM reaches the driver, which ends the workers itself, but a
    SIGKILL (or a crash) cannot be caught, so on Linux the kernel sends the worker SIGTERM when the driver dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def _worker_init(parent: int) -> None:
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it stops the workers
    # tqdm's default lock is a multiprocessing semaphore; a worker ended by the driver would leak it (and the
    # resource tracker would print a warning). One process, one thread each: a thread lock does.
    tqdm.set_lock(threading.RLock())


def _run_pool(
    args: list[tuple[str, dict]], jobs: int, data_dir: str | None, threads: int | None = None, nproc: int = 1
) -> None:
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ctx = mp.get_context("spawn")  # fresh interpreters: no inherited torch thread pools or CUDA state
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init, initargs=(os.getpid(),))
    try:
        gpus = torch.cuda.device_count()
        futures = [
            pool.submit(run_cell, run_dir, cfg, data_dir, threads, i if gpus else None, nproc)
            for i, (run_dir, cfg) in enumerate(args)
        ]
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


def ray_options(gpus_per_run: float, nproc: int = 1) -> dict:
    """Resources each cell asks Ray for: a CPU per process of its model (--nproc-per-run) and, on a GPU cluster,
    its share of GPUs (Ray then sets CUDA_VISIBLE_DEVICES per task, so cells spread over the GPUs instead of all
    landing on cuda:0; a cell on N processes wants N)."""
    return {"num_cpus": nproc, "num_gpus": gpus_per_run}


def _run_ray(
    args: list[tuple[str, dict]], address: str | None, data_dir: str | None, gpus_per_run: float = 0.0, nproc: int = 1
) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no phoning home from offline machines
    try:
        import ray  # the optional 'ray' extra, only for --executor ray
    except ImportError:
        raise VaelabError("the ray executor needs Ray: pip install 'vaelab[ray]'") from None
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise VaelabError(
                f"cannot connect to a Ray cluster at {address or 'auto'} ({str(e).splitlines()[0]})"
            ) from None
    remote = ray.remote(**ray_options(gpus_per_run, nproc))(run_cell)
    ray.get([remote.remote(run_dir, cfg, data_dir, nproc, None, nproc) for run_dir, cfg in args])

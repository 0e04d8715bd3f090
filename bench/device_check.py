"""One section of the GPU device check (bench/device_check.sh runs them all); writes one JSON file.

Sections:
  throughput  training images/s and peak GPU memory of the reference conv models (Fashion-MNIST latent 16
              Bernoulli, CIFAR-10 latent 128 discretized logistic) and the hierarchical GPU preset's network,
              fp32 and bf16, on random uint8 images (throughput does not depend on pixel content)
  multirun    bench/multirun_throughput.py's measurement: R runs stacked (`study --together`) vs one by one
  evaluate    seconds of `vaelab evaluate` (K = 100, the whole Fashion-MNIST test set), fp32 and bf16 IWAE
  seed        the `seed` study preset's Fashion-MNIST cells trained together and evaluated, epochs cut to fit
  hvae        the cifar10-hvae-gpu preset for a time budget on the real CIFAR-10 pixels (cifar10-lossless) and
              its bits/dim on their 1,000 real test images

Usage: python bench/device_check.py SECTION --json OUT.json [--small] [--seconds S]
--small shrinks every size so that the whole check runs on a CPU in a minute or two (CI runs it so it cannot rot).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import synthetic  # noqa: E402
from vaelab import data as vdata  # noqa: E402
from vaelab.core.device import resolve_device
from vaelab.evaluation.evaluate import evaluate  # noqa: E402
from vaelab.runs.checkpoint import load_checkpoint  # noqa: E402
from vaelab.runs.config import TrainConfig  # noqa: E402
from vaelab.runs.presets import PRESETS  # noqa: E402
from vaelab.training import guard
from vaelab.training.loop import train  # noqa: E402


def _facts() -> dict:
    dev = resolve_device("auto")
    return {
        "device": str(dev),
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _train_rate(cfg: TrainConfig, ds: vdata.Dataset) -> dict:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        last = train(cfg, tmp, dataset=ds, progress=False)
    mem = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"images_per_s": round(last["images_per_s"], 1), "peak_gpu_mem_mb": mem and round(mem, 1)}


def throughput(args) -> dict:
    n = 2000 if args.small else 30000
    hvae = PRESETS["cifar10-hvae-gpu"].replace(budget="", epochs=2, val_size=10, width=16 if args.small else 128)
    models = {
        "conv_fashion-mnist_latent16_bernoulli": (
            TrainConfig(dataset="fashion-mnist", latent_dim=16, likelihood="bernoulli", epochs=2, val_size=10),
            n,
        ),
        "conv_cifar10_latent128_dlogistic": (TrainConfig(dataset="cifar10", latent_dim=128, epochs=2, val_size=10), n),
        "hierarchical_cifar10_hvae_gpu": (hvae, n // 6),
    }
    rows = {}
    for name, (cfg, images) in models.items():
        ds = synthetic(cfg.dataset, images + 10)
        for batch in (128, 1024) if name.startswith("conv") else (cfg.batch_size,):
            for bf16 in (False, True):
                key = f"{name}_batch{batch}_{'bf16' if bf16 else 'fp32'}"
                rows[key] = _train_rate(cfg.replace(bf16=bf16, batch_size=batch), ds)
                print(key, rows[key], file=sys.stderr, flush=True)
    # the step with the non-finite guard read on the host every step, as before 2026-12-03 (training.guard)
    cfg, images = models["conv_fashion-mnist_latent16_bernoulli"]
    saved = dict(guard.HOST_READ_EVERY)
    guard.HOST_READ_EVERY.update(cuda=1, default=1)
    try:
        key = "conv_fashion-mnist_latent16_bernoulli_batch128_fp32_guard_read_every_step"
        rows[key] = _train_rate(cfg.replace(batch_size=128), synthetic(cfg.dataset, images + 10))
    finally:
        guard.HOST_READ_EVERY.clear()
        guard.HOST_READ_EVERY.update(saved)
    return {
        "images_per_epoch": n,
        "epochs": 2,
        "rate_of": "the second (warm) epoch",
        "guard_read_every": saved,
        "results": rows,
    }


def multirun(args) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).parent / "multirun_throughput.py"),
        "--runs",
        str(4 if args.small else args.runs),
        "--images",
        "1000" if args.small else "20000",
        "--epochs",
        "2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def evaluate_time(args) -> dict:
    ds = vdata.load("fashion-mnist")
    if args.small:
        ds = vdata.Dataset(ds.name, ds.x_train[:3000], ds.y_train[:3000], ds.x_test[:500], ds.y_test[:500], ds.classes)
    k = 5 if args.small else 100
    with tempfile.TemporaryDirectory() as tmp:
        train(
            TrainConfig(dataset="fashion-mnist", latent_dim=16, likelihood="bernoulli", epochs=1, val_size=500),
            tmp,
            dataset=ds,
            progress=False,
        )
        rows = {}
        for precision in ("fp32", "bf16", "fp32"):  # the first call pays CUDA's warm-up; the repeat shows it
            t0 = time.perf_counter()
            r = evaluate(tmp, dataset=ds, test_size=0, iwae_samples=k, write=False, precision=precision)
            rows.setdefault(precision, []).append(
                {"seconds": round(time.perf_counter() - t0, 2), "iwae_nll": r["iwae_nll"]}
            )
    return {
        "dataset": "fashion-mnist",
        "test_images": len(ds.x_test),
        "iwae_samples": k,
        "runs": rows,
        "includes": "data to device, ELBO terms, KL per dimension, active units, IWAE, PSNR, SSIM, latent probes",
    }


def seed_study(args) -> dict:
    from vaelab import study

    seeds, latents, betas = (
        ([0, 1], [2, 16], [0.5, 1.0])
        if args.small
        else ([0, 1, 2], [2, 4, 8, 16, 32, 64, 128], [0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    )
    spec = study.parse_spec(
        {
            "name": "seed-fashion-mnist",
            "base": {
                "epochs": args.epochs,
                "iwae_samples": 5 if args.small else 100,
                "dataset": "fashion-mnist",
                **({"train_size": 2000, "test_size": 300, "val_size": 300} if args.small else {}),
            },
            "sweep": [
                {"grid": {"latent_dim": latents, "seed": seeds}},
                {"base": {"latent_dim": study.BETA_LATENT["fashion-mnist"]}, "grid": {"beta": betas, "seed": seeds}},
            ],
        },
        "device_check",
    )
    out = Path(args.workdir) / "seed-study"
    t0 = time.perf_counter()
    # The study in a child process under --seconds: a cut study keeps its finished cells (it resumes), which are
    # then counted and summarised here.
    script = (
        "import json, sys; from vaelab import study; spec = study.parse_spec(json.loads(sys.argv[1]), 'check');"
        f" study.run(spec, sys.argv[2], jobs={args.jobs}, together=True)"
    )
    try:
        subprocess.run(
            [sys.executable, "-c", script, json.dumps(spec.to_dict()), str(out)],
            timeout=args.study_seconds,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        cut = False
    except subprocess.TimeoutExpired:
        cut = True
    wall = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for c in spec.cells:
        s = study.cell_status(out / "runs" / c.run_id)
        counts[s] = counts.get(s, 0) + 1
    result = {
        "cells": len(spec.cells),
        "counts": counts,
        "cut_at_limit": cut,
        "jobs": args.jobs,
        "epochs": args.epochs,
        "seconds_all": round(wall, 1),
        "note": "the seed preset's Fashion-MNIST half with epochs cut to fit; the CIFAR-10 stand-in is not on "
        "the device machine",
    }
    if counts.get("done"):
        res = study.write_results(out)
        result["bpd_iwae_by_latent"] = res[res.beta == 1.0].groupby("latent_dim")["bpd_iwae"].mean().round(4).to_dict()
    return result


def hvae(args) -> dict:
    cfg = PRESETS["cifar10-hvae-gpu"].replace(
        dataset="cifar10-lossless",
        val_size=500,
        budget="",  # the preset's step count replaced by the section's seconds
        time_budget=args.seconds,
        **({} if args.skip_grad_norm < 0 else {"skip_grad_norm": args.skip_grad_norm}),
        iwae_samples=5 if args.small else 100,
        **({"width": 16, "train_size": 300, "test_size": 100, "epochs": 1} if args.small else {}),
    )
    out = Path(args.workdir) / "hvae"
    t0 = time.perf_counter()
    last = train(cfg, out, progress=False)
    t1 = time.perf_counter()
    r = evaluate(out)
    hist = load_checkpoint(out)["history"]
    return {
        "preset": "cifar10-hvae-gpu",
        "skip_grad_norm": cfg.skip_grad_norm,
        "dataset": "cifar10-lossless (3,500 real train images, 1,000 real test)",
        "time_budget_s": args.seconds,
        "train_wall_s": round(t1 - t0, 1),
        "epochs": len(hist),
        "images_per_s_last_epoch": round(last["images_per_s"], 1),
        "bpd_iwae": r["bpd_iwae"],
        "bpd_elbo": r["bpd_elbo"],
        "iwae_samples": r["iwae_samples"],
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "steps": hist[-1]["step"],
        "skipped_large_grad": sum(h["skipped_large_grad"] for h in hist),
    }


SECTIONS = {"throughput": throughput, "multirun": multirun, "evaluate": evaluate_time, "seed": seed_study, "hvae": hvae}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("section", choices=list(SECTIONS))
    ap.add_argument("--json", required=True, help="where to write the section's JSON")
    ap.add_argument("--small", action="store_true", help="tiny sizes: a CPU dry run")
    ap.add_argument("--seconds", type=float, default=120.0, help="hvae: training budget")
    ap.add_argument("--epochs", type=int, default=3, help="seed: epochs per run")
    ap.add_argument("--runs", type=int, default=18, help="multirun: runs stacked")
    ap.add_argument("--jobs", type=int, default=4, help="seed: cells evaluated in parallel")
    ap.add_argument("--study-seconds", type=float, default=110.0, help="seed: the study's time limit")
    ap.add_argument("--skip-grad-norm", type=float, default=-1.0, help="hvae: override the preset's (-1 keeps it)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        t0 = time.perf_counter()
        result = {
            "section": args.section,
            **_facts(),
            "small": args.small,
            **SECTIONS[args.section](args),
            "section_seconds": round(time.perf_counter() - t0, 1),
        }
    Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()

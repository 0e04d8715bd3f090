"""Training throughput (images/s) and peak memory of vaelab's trainer, per lever, vs a minimal loop; one JSON line.

Usage: python bench/train_throughput.py [--device auto|cpu|cuda] [--images 15000] [--epochs 2] [--repeats 5]
       [--threads N] [--levers fp32,bf16,channels_last,compile]
Each measurement runs in a fresh process (its peak RSS is its own); images are random uint8 of each dataset's
shape (throughput does not depend on pixel content). Every row: vaelab at fp32 vs the minimal loop, and each lever
(a `vaelab train` flag) as images/s, speed-up over fp32 and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from vaelab.core.device import resolve_device
from vaelab.data import DATASETS, Dataset
from vaelab.models import VAE
from vaelab.runs.config import TrainConfig
from vaelab.training.loop import train


def synthetic(name: str, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    shape = DATASETS[name].shape
    return Dataset(
        name,
        rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        rng.integers(0, 10, n),
        rng.integers(0, 256, (100, *shape), dtype=np.uint8),
        rng.integers(0, 10, 100),
        tuple(str(i) for i in range(10)),
    )


def minimal_loop(ds: Dataset, latent_dim: int, batch_size: int, device: torch.device, epochs: int) -> float:
    """The reference: the same conv model, BCE + KL, Adam, random-permutation batches; nothing else."""
    torch.manual_seed(0)
    model = VAE(ds.shape, latent_dim, "conv", "bernoulli").to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x_all = torch.from_numpy(ds.x_train).to(device)
    rate = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x_all), device=device).split(batch_size):
            x = x_all[idx]
            mu, logvar = model.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            logits = model.decode(z)
            recon = F.binary_cross_entropy_with_logits(logits, x.float() / 255, reduction="sum") / len(x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
            opt.zero_grad()
            (recon + kl).backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = len(x_all) / (time.perf_counter() - t0)  # last (warm) epoch
    return rate


# The CPU/GPU levers, each one flag of `vaelab train`: what each buys over fp32 on the same machine.
LEVERS = {"fp32": {}, "bf16": {"bf16": True}, "channels_last": {"channels_last": True}, "compile": {"compile": True}}


def _child(conn, kind: str, name: str, latent_dim: int, likelihood: str, lever: str, args) -> None:
    """One measurement in a fresh process, so that its peak resident memory is its own."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = resolve_device(args.device)
    ds = synthetic(name, args.images + 10)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if kind == "minimal":
        rate = minimal_loop(ds, latent_dim, args.batch_size, device, args.epochs)
    else:
        cfg = TrainConfig(
            dataset=name,
            latent_dim=latent_dim,
            likelihood=likelihood,
            epochs=args.epochs,
            batch_size=args.batch_size,
            val_size=10,
            device=args.device,
            **LEVERS[lever],
        )
        with tempfile.TemporaryDirectory() as tmp:
            rate = train(cfg, tmp, dataset=ds, progress=False)["images_per_s"]  # the last (warm) epoch
    conn.send(
        {
            "rate": rate,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
        }
    )


def measure(*spec) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, *spec))
    proc.start()
    out = receive.recv()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per measurement (default torch's)")
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma-separated subset of " + ",".join(LEVERS))
    args = ap.parse_args()
    levers = [v for v in args.levers.split(",") if v]
    if not levers or any(v not in LEVERS for v in levers) or levers[0] != "fp32":
        raise SystemExit(f"--levers: fp32 first, then any of {', '.join(LEVERS)}")
    device = resolve_device(args.device)
    result = {
        "bench": "train_throughput",
        "device": str(device),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "machine": platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "batch_size": args.batch_size,
        "images": args.images,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "results": [],
    }
    for name, latent_dim in (("fashion-mnist", 16), ("cifar10", 128)):
        for likelihood in ("bernoulli", "discretized_logistic"):
            runs: dict[str, list[dict]] = {}
            for _ in range(args.repeats):  # interleaved repeats, medians: this machine's noise is +-10 %
                for lever in levers:
                    runs.setdefault(lever, []).append(measure("vaelab", name, latent_dim, likelihood, lever, args))
                runs.setdefault("minimal", []).append(measure("minimal", name, latent_dim, likelihood, "fp32", args))
            rate = {k: np.array([m["rate"] for m in v]) for k, v in runs.items()}
            # Each repeat's ratio pairs runs made seconds apart, so slow drifts of a shared machine cancel.
            paired = rate["fp32"] / rate["minimal"]
            row = {
                "dataset": name,
                "latent_dim": latent_dim,
                "likelihood": likelihood,
                "vaelab_images_per_s": round(float(np.median(rate["fp32"])), 1),
                "minimal_loop_images_per_s": round(float(np.median(rate["minimal"])), 1),
                "ratio": round(float(np.median(paired)), 3),
                "ratio_min_max": [round(float(paired.min()), 3), round(float(paired.max()), 3)],
                "peak_rss_mb": round(max(m["peak_rss_mb"] for m in runs["fp32"]), 1),
                "levers": {},
            }
            for lever in levers:
                row["levers"][lever] = {
                    "images_per_s": round(float(np.median(rate[lever])), 1),
                    "speedup_vs_fp32": round(float(np.median(rate[lever] / rate["fp32"])), 3),
                    "peak_rss_mb": round(max(m["peak_rss_mb"] for m in runs[lever]), 1),
                }
                if runs[lever][0]["peak_gpu_mem_mb"] is not None:
                    row["levers"][lever]["peak_gpu_mem_mb"] = round(max(m["peak_gpu_mem_mb"] for m in runs[lever]), 1)
            result["results"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)  # progress; the JSON line on stdout is the result
    print(json.dumps(result))


if __name__ == "__main__":
    main()

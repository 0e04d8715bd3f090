"""Training throughput (images/s) and peak memory of vaelab's trainer vs a minimal hand-written loop; one JSON line.

Usage: python bench/train_throughput.py [--device auto|cpu|cuda] [--images 15000] [--epochs 2] [--repeats 5]
Images are random uint8 of each dataset's shape (throughput does not depend on pixel content).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from vaelab.config import TrainConfig
from vaelab.data import DATASETS, Dataset
from vaelab.models import VAE
from vaelab.train import resolve_device, train


def synthetic(name: str, n: int) -> Dataset:
    rng = np.random.default_rng(0)
    shape = DATASETS[name].shape
    return Dataset(name, rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.integers(0, 10, n),
                   rng.integers(0, 256, (100, *shape), dtype=np.uint8), rng.integers(0, 10, 100),
                   tuple(str(i) for i in range(10)))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=15000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = resolve_device(args.device)
    result = {"bench": "train_throughput", "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "machine": platform.machine(),
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "batch_size": args.batch_size, "images": args.images, "repeats": args.repeats, "results": []}
    for name, latent_dim in (("fashion-mnist", 16), ("cifar10", 128)):
        ds = synthetic(name, args.images + 10)
        rates: dict[str, list[float]] = {}
        peak: dict[str, float] = {}
        for _ in range(args.repeats):  # interleaved repeats, medians: this machine's noise is +-10 %
            for likelihood in ("bernoulli", "discretized_logistic"):
                cfg = TrainConfig(dataset=name, latent_dim=latent_dim, likelihood=likelihood, epochs=args.epochs,
                                  batch_size=args.batch_size, val_size=10, device=args.device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                with tempfile.TemporaryDirectory() as tmp:
                    last = train(cfg, tmp, dataset=ds, progress=False)
                rates.setdefault(likelihood, []).append(last["images_per_s"])
                if device.type == "cuda":
                    peak[likelihood] = torch.cuda.max_memory_allocated() / 2**20
            rates.setdefault("minimal", []).append(minimal_loop(ds, latent_dim, args.batch_size, device, args.epochs))
        base = float(np.median(rates["minimal"]))
        for likelihood in ("bernoulli", "discretized_logistic"):
            r = float(np.median(rates[likelihood]))
            # Each repeat's ratio pairs runs made seconds apart, so slow drifts of a shared machine cancel.
            paired = np.array(rates[likelihood]) / np.array(rates["minimal"])
            row = {"dataset": name, "latent_dim": latent_dim, "likelihood": likelihood,
                   "vaelab_images_per_s": round(r, 1), "minimal_loop_images_per_s": round(base, 1),
                   "ratio": round(float(np.median(paired)), 3),
                   "ratio_min_max": [round(float(paired.min()), 3), round(float(paired.max()), 3)]}
            if likelihood in peak:
                row["peak_gpu_mem_mb"] = round(peak[likelihood], 1)
            result["results"].append(row)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Aggregate training images/s of R runs trained together (vaelab.training.multirun, vmap) vs the same runs one by one; JSON.

The Fashion-MNIST reference model (conv, latent 16, Bernoulli), R runs differing in seed and beta, random uint8
images (throughput does not depend on pixel content). Each way trains every run for --epochs; the rate counts the
last (warm) epoch of all runs together. The issue's GPU target: >= 1,000,000 images/s aggregate on one H100.

Usage: python bench/multirun_throughput.py [--runs 8] [--images 20000] [--epochs 2] [--device auto] [--bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import synthetic  # noqa: E402
from vaelab.core.device import resolve_device
from vaelab.runs.checkpoint import load_checkpoint  # noqa: E402
from vaelab.runs.config import TrainConfig  # noqa: E402
from vaelab.training.loop import train  # noqa: E402
from vaelab.training.multirun import train_together  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--skip-alone", action="store_true", help="only the stacked way (long one-by-one baselines)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    ds = synthetic("fashion-mnist", args.images + 1000)
    cfgs = [
        TrainConfig(
            dataset="fashion-mnist",
            latent_dim=16,
            likelihood="bernoulli",
            epochs=args.epochs,
            batch_size=args.batch_size,
            val_size=1000,
            device=args.device,
            bf16=args.bf16,
            seed=i % 3,
            beta=[0.5, 1.0, 2.0, 4.0, 8.0, 16.0][i // 3 % 6],
        )
        for i in range(args.runs)
    ]
    n = args.images
    result = {
        "bench": "multirun_throughput",
        "runs": args.runs,
        "images_per_run_epoch": n,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "bf16": args.bf16,
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"together{i}" for i in range(args.runs)]
        train_together(cfgs, outs, dataset=ds)
        last = load_checkpoint(outs[0])["history"][-1]["seconds"]
        result["together_images_per_s"] = args.runs * n / last
        if not args.skip_alone:
            total = 0.0
            for i, c in enumerate(cfgs):
                train(c, Path(tmp) / f"alone{i}", dataset=ds, progress=False)
                total += load_checkpoint(Path(tmp) / f"alone{i}")["history"][-1]["seconds"]
            result["alone_images_per_s"] = args.runs * n / total
            result["speedup"] = result["together_images_per_s"] / result["alone_images_per_s"]
    result["target_images_per_s_h100"] = 1_000_000
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


if __name__ == "__main__":
    main()

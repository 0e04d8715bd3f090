"""Training images/s of one model on 1..N processes (DistributedDataParallel, `vaelab train --nproc N`).

The reference Fashion-MNIST model (conv, latent 16, discretized logistic) at global batch 128 (and 512, where each
process's shard is larger) for a step budget, on the CPU (gloo; OMP threads = cores / N) or on each of N GPUs (NCCL).
images/s is the training rate of the epochs after the first (the history's images_per_s), so start-up, rendezvous
and validation are left out. Writes one JSON file.

Usage: python bench/ddp_scaling.py --json OUT.json [--procs 1,2] [--steps 600] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def one(nproc: int, batch: int, steps: int, data_dir: str | None, device: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "vaelab", "train", "--dataset", "fashion-mnist", "--latent-dim", "16"]
        cmd += ["--batch-size", str(batch), "--epochs", "1000", "--budget", f"{steps}steps", "--val-size", "1000"]
        cmd += ["--no-eval", "--device", device, "--nproc", str(nproc), "--out", str(out)]
        cmd += ["--data-dir", data_dir] if data_dir else []
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if r.returncode:
            return {"nproc": nproc, "batch": batch, "error": r.stderr.strip().splitlines()[-1]}
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    warm = [r for r in rows[1:] if not r.get("partial")] or rows
    seen = sum(r["images_per_s"] * r["seconds"] for r in warm)
    return {
        "nproc": nproc,
        "batch": batch,
        "steps": steps,
        "images_per_s": seen / sum(r["seconds"] for r in warm),
        "epochs_timed": len(warm),
        "wall_s": wall,
        "final_val_neg_elbo": rows[-1].get("val_neg_elbo"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--procs", default=None, help="process counts (default: 1,2 on the CPU, 1..GPUs on CUDA)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batches", default="128,512")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    cuda = args.device != "cpu" and torch.cuda.is_available()
    procs = (
        [int(p) for p in args.procs.split(",")]
        if args.procs
        else list(range(1, (torch.cuda.device_count() if cuda else 2) + 1))
    )
    device = "cuda" if cuda else "cpu"
    rows = [one(n, b, args.steps, args.data_dir, device) for b in map(int, args.batches.split(",")) for n in procs]
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(out, indent=2))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

"""Does bf16 autocast cost model quality? The check behind the study presets' bf16 default.

Trains the `standard` preset's β = 1, latent-32 cell (conv VAE, discretized logistic — the only likelihood the
preset uses — batch 128, EMA 0.999, constant learning rate) on Fashion-MNIST and CIFAR-10, in fp32 and with bf16
autocast, 3 seeds each, for the same number of steps (same seed = same batches and initial weights). Every model is
evaluated in fp32 on the same 2,000 test images (IWAE with K = 20, ELBO terms, latent probe), so a difference
comes from training alone. Reports each pair's difference (bf16 − fp32) and a paired t-test per dataset
(scipy.stats.ttest_rel), with training seconds.

Usage: python bench/bf16_quality.py --json OUT.json [--steps S] [--jobs 2] [--data-dir DIR]
(S = 800: 12 runs, about 10 minutes with --jobs 2 on 2 CPU cores.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from stamp import stamp, write
from vaelab.evaluation.evaluate import evaluate
from vaelab.runs.config import TrainConfig
from vaelab.training.loop import train

DATASETS = ("fashion-mnist", "cifar10")
SEEDS = (0, 1, 2)
KEYS = ("iwae_nll", "neg_elbo", "recon", "kl", "probe_accuracy")


def one(dataset: str, bf16: bool, seed: int, steps: int, data_dir: str | None) -> dict:
    torch.set_num_threads(1)
    cfg = TrainConfig(
        dataset=dataset, latent_dim=32, epochs=10_000, budget=f"{steps}steps", ema=0.999, bf16=bf16, seed=seed
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, Path(tmp) / "run", data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - t0
        ev = evaluate(Path(tmp) / "run", data_dir=data_dir, test_size=2000, iwae_samples=20, write=False)
    return {"dataset": dataset, "bf16": bf16, "seed": seed, "train_seconds": seconds, **{k: ev[k] for k in KEYS}}


def compare(runs: list[dict]) -> dict:
    """Per dataset and metric: the mean of each precision, the paired differences and their t-test."""
    out = {}
    for d in DATASETS:
        pairs = {(r["seed"], r["bf16"]): r for r in runs if r["dataset"] == d}
        row = {}
        for k in (*KEYS, "train_seconds"):
            a = np.array([pairs[(s, False)][k] for s in SEEDS])
            b = np.array([pairs[(s, True)][k] for s in SEEDS])
            t = stats.ttest_rel(b, a)
            row[k] = {
                "fp32": float(a.mean()),
                "bf16": float(b.mean()),
                "bf16_minus_fp32": [float(v) for v in b - a],
                "p": float(t.pvalue),
            }
        out[d] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    grid = [(d, b, s) for d in DATASETS for s in SEEDS for b in (False, True)]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, *zip(*grid), [args.steps] * len(grid), [args.data_dir] * len(grid)))
    summary = compare(runs)
    write(args.json, {**stamp(), "steps": args.steps, "summary": summary, "runs": runs}, summary)


if __name__ == "__main__":
    main()

"""Does bf16 autocast cost model quality? The check behind bf16 as a default, per likelihood (or reproduction row).

Trains the `standard` preset's β = 1, latent-32 cell (conv VAE, batch 128, EMA 0.999, constant learning rate) with
each --likelihood (default: every one) on Fashion-MNIST and CIFAR-10, in fp32 and with bf16 autocast, 3 seeds
each, for the same number of steps (same seed = same batches and initial weights). Every model is evaluated in fp32
on the same 2,000 test images (IWAE with K = 20, ELBO terms, latent probe), so a difference comes from training
alone. Reports per likelihood and dataset each pair's difference (bf16 − fp32), a paired t-test
(scipy.stats.ttest_rel) and the equivalence tests (TOST, statsmodels' ttost_paired) within ±0.5 % and ±1 % of the
fp32 mean, with training seconds.

With --row ID it trains a reproduction row's recipe instead (its network, data, optimiser and warm-up share, for S
steps, no early stopping), so that bf16 is measured on the likelihood tables' models too.

Usage: python bench/bf16_quality.py --json OUT.json [--likelihood L ... | --row ID] [--steps S] [--jobs 2]
[--data-dir DIR] (S = 800: 12 runs a likelihood, about 10 minutes with --jobs 2 on 2 CPU cores.)
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
from statsmodels.stats.weightstats import ttost_paired

from stamp import stamp, write
from vaelab.evaluation.evaluate import evaluate
from vaelab.models.losses import LIKELIHOODS
from vaelab.runs.config import TrainConfig
from vaelab.study.reproduce import ROWS, config_for
from vaelab.training.loop import train

DATASETS = ("fashion-mnist", "cifar10")
SEEDS = (0, 1, 2)
KEYS = ("iwae_nll", "neg_elbo", "recon", "kl", "probe_accuracy")
MARGINS = (0.005, 0.01)  # equivalence margins, a share of the fp32 mean IWAE


def config(cell: str, dataset: str, bf16: bool, seed: int, steps: int) -> TrainConfig:
    """The standard cell with likelihood `cell`, or the reproduction row `cell` (its recipe, at `steps` steps)."""
    if cell in ROWS:
        return config_for(ROWS[cell], seed, f"{steps}steps", 20).replace(bf16=bf16, patience=0)
    return TrainConfig(
        dataset=dataset,
        likelihood=cell,
        latent_dim=32,
        epochs=10_000,
        budget=f"{steps}steps",
        ema=0.999,
        bf16=bf16,
        seed=seed,
    )


def one(cell: str, dataset: str, bf16: bool, seed: int, steps: int, data_dir: str | None) -> dict:
    torch.set_num_threads(1)
    cfg = config(cell, dataset, bf16, seed, steps)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, Path(tmp) / "run", data_dir=data_dir, progress=False)
        seconds = time.perf_counter() - t0
        ev = evaluate(Path(tmp) / "run", data_dir=data_dir, test_size=2000, iwae_samples=20, write=False)
    return {
        "cell": cell,
        "likelihood": cfg.likelihood,
        "dataset": dataset,
        "bf16": bf16,
        "seed": seed,
        "train_seconds": seconds,
        **{k: ev.get(k, float("nan")) for k in KEYS},
    }


def tost(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """p of 'bf16 and fp32 IWAE differ by less than m of the fp32 mean' for each margin m (two one-sided tests)."""
    out = {}
    for m in MARGINS:
        bound = m * abs(a.mean())
        out[f"{m:.1%}"] = float(ttost_paired(b, a, -bound, bound)[0])
    return out


def compare(runs: list[dict]) -> dict:
    """Per likelihood, dataset and metric: the mean of each precision, the paired differences and their t-test; the
    IWAE's equivalence tests."""
    out = {}
    for cell, d in sorted({(r["cell"], r["dataset"]) for r in runs}):
        pairs = {(r["seed"], r["bf16"]): r for r in runs if r["dataset"] == d and r["cell"] == cell}
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
            if k == "iwae_nll":
                row[k]["tost_p"] = tost(a, b)
        out[f"{cell}/{d}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--likelihood", nargs="+", default=list(LIKELIHOODS), choices=list(LIKELIHOODS))
    ap.add_argument("--row", default=None, choices=list(ROWS), help="a reproduction row's recipe instead")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    cells = (
        [(args.row, ROWS[args.row].config.dataset)] if args.row else [(c, d) for c in args.likelihood for d in DATASETS]
    )
    grid = [(c, d, b, s) for c, d in cells for s in SEEDS for b in (False, True)]
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, *zip(*grid), [args.steps] * len(grid), [args.data_dir] * len(grid)))
    summary = compare(runs)
    write(args.json, {**stamp(), "steps": args.steps, "summary": summary, "runs": runs}, summary)


if __name__ == "__main__":
    main()

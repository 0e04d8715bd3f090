"""Seconds of `vaelab evaluate` on the whole Fashion-MNIST test set with K = 100, per IWAE precision; one JSON line.

Trains the reference conv VAE (latent 16, --likelihood, default Bernoulli) for --epochs on Fashion-MNIST (or takes
--run), then times vaelab.evaluation.evaluate.evaluate (data loading, ELBO terms, KL per dimension, active units, IWAE, PSNR,
SSIM, latent probes with their untrained baselines) once per precision, interleaved over --reps. The IWAE values of
the precisions are reported beside the Monte-Carlo standard error of the test mean (from two fp32 seeds), so that
a reader sees whether bf16 moves the number beyond noise.

Usage: python bench/evaluate_speed.py [--likelihood bernoulli|discretized_logistic] [--reps 2] [--run DIR]
Needs the real Fashion-MNIST (VAELAB_DATA or --data-dir).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import tempfile
import time

import torch

from vaelab import data as vdata
from vaelab.evaluation.evaluate import evaluate, iwae_nll
from vaelab.runs.config import TrainConfig
from vaelab.runs.run import Run
from vaelab.training.loop import train


def mc_standard_error(run_dir: str, ds: vdata.Dataset, k: int, n: int = 2000) -> float:
    """Standard error of one seed's whole-test-set mean IWAE, from the per-image differences of two fp32 seeds on
    the first n test images (the per-image spread; scaled to the whole test set)."""
    _, model, _ = Run(run_dir).load(torch.device("cpu"))
    x = torch.from_numpy(ds.x_test[:n].copy())
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(torch.cat([iwae_nll(model.eval(), x[i : i + 500], None, k) for i in range(0, len(x), 500)]))
    return ((runs[0] - runs[1]).double().std() / math.sqrt(2 * len(ds.x_test))).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--likelihood", default="bernoulli")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iwae-samples", type=int, default=100)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--run", default=None, help="a trained run to evaluate instead of training one")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = vdata.load("fashion-mnist", args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tmp
        if not args.run:
            train(
                TrainConfig(
                    dataset="fashion-mnist", latent_dim=16, likelihood=args.likelihood, epochs=args.epochs, device="cpu"
                ),
                tmp,
                dataset=ds,
                progress=False,
            )
        rows: dict[str, list[dict]] = {"fp32": [], "bf16": []}
        for _ in range(args.reps):
            for precision in rows:
                t0 = time.perf_counter()
                r = evaluate(
                    run,
                    data_dir=args.data_dir,
                    test_size=0,
                    iwae_samples=args.iwae_samples,
                    device="cpu",
                    write=False,
                    precision=precision,
                )
                rows[precision].append(
                    {"seconds": time.perf_counter() - t0, "iwae_nll": r["iwae_nll"], "eval_seconds": r["eval_seconds"]}
                )
        se = mc_standard_error(run, ds, args.iwae_samples)
    best = {p: min(r["seconds"] for r in v) for p, v in rows.items()}
    print(
        json.dumps(
            {
                "bench": "evaluate_speed",
                "dataset": "fashion-mnist",
                "likelihood": args.likelihood,
                "test_images": len(ds.x_test),
                "iwae_samples": args.iwae_samples,
                "runs": rows,
                "best_seconds": best,
                "speedup_bf16": best["fp32"] / best["bf16"],
                "iwae_bf16_minus_fp32": rows["bf16"][0]["iwae_nll"] - rows["fp32"][0]["iwae_nll"],
                "iwae_mc_standard_error": se,
                "target_seconds": 30.0,
                "met": best["bf16"] <= 30.0,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()

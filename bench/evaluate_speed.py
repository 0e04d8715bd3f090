"""Evaluation against one training epoch, side by side: the whole Fashion-MNIST test set at K = 100; one JSON line.

Each of --reps repetitions trains the reference conv VAE (latent 16, --likelihood, default Bernoulli) for one epoch
as `vaelab train` does (timed: the epoch with its validation pass), then times vaelab.evaluation.evaluate.evaluate on
that model (data loading, ELBO terms, KL per dimension, active units, IWAE, PSNR, SSIM, latent probes with their
untrained baselines) in fp32 and, where the CPU has native bf16, with the IWAE in bf16. The issue's target is
evaluation in at most twice the epoch. The IWAE values of the precisions are reported beside the Monte-Carlo
standard error of the test mean (from two fp32 seeds), so that a reader sees whether bf16 moves the number.

Usage: python bench/evaluate_speed.py [--likelihood bernoulli|discretized_logistic] [--reps 3] [--json FILE]
Needs the real Fashion-MNIST (VAELAB_DATA or --data-dir). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import tempfile
import time
from pathlib import Path

import torch

from stamp import stamp
from vaelab import data as vdata
from vaelab.core.device import bf16_native
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


def one_epoch_seconds(likelihood: str, ds: vdata.Dataset, out: str) -> float:
    """Wall seconds of one `vaelab train` epoch of the reference VAE (its validation pass included), into `out`."""
    cfg = TrainConfig(dataset="fashion-mnist", latent_dim=16, likelihood=likelihood, epochs=1, device="cpu")
    t0 = time.perf_counter()
    train(cfg, out, dataset=ds, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--likelihood", default="bernoulli")
    ap.add_argument("--iwae-samples", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None, help="also write the result to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = vdata.load("fashion-mnist", args.data_dir)
    # bf16 only where native: emulated, it is slower than fp32 and no one would evaluate in it
    native = bf16_native(torch.device("cpu"))
    precisions = ("fp32", "bf16") if native else ("fp32",)
    rows: dict[str, list[dict]] = {p: [] for p in precisions}
    epochs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):  # side by side: an epoch, then the evaluation of the model it trained
            run = f"{tmp}/rep{rep}"
            epochs.append(one_epoch_seconds(args.likelihood, ds, run))
            for precision in precisions:
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
        se = mc_standard_error(f"{tmp}/rep0", ds, args.iwae_samples)
    ratios = {p: sorted(r["seconds"] / e for r, e in zip(v, epochs)) for p, v in rows.items()}
    result = {
        "bench": "evaluate_speed",
        **stamp(),
        "dataset": "fashion-mnist",
        "likelihood": args.likelihood,
        "test_images": len(ds.x_test),
        "iwae_samples": args.iwae_samples,
        "epoch_seconds": epochs,
        "runs": rows,
        "eval_over_epoch": ratios,
        "eval_over_epoch_median": {p: v[len(v) // 2] for p, v in ratios.items()},
        "target_eval_over_epoch": 2.0,
        "iwae_mc_standard_error": se,
        "threads": torch.get_num_threads(),
        "bf16_native": native,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if "bf16" in rows:
        result["iwae_bf16_minus_fp32"] = [b["iwae_nll"] - a["iwae_nll"] for a, b in zip(rows["fp32"], rows["bf16"])]
    line = json.dumps(result)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

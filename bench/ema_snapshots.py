"""Which weights make a good model at half a training budget (the snapshots that trace findings along training)?

Trains the reference Fashion-MNIST model (conv, latent 16, discretized logistic, batch 128) for a budget of B steps
and for B/2 steps, each with a cosine learning rate over its budget, with and without an EMA of the weights
(decay 0.999, warmed up), and with a constant learning rate. Reports the validation negative ELBO (nats per image)
at every epoch, so that the model at B/2 of each long run can be set against the run trained for B/2 alone.

Usage: python bench/ema_snapshots.py --json OUT.json [--steps B] [--data-dir DIR]
(B = 3440: 8 epochs of 430 steps; with --jobs 2 it takes about 12 minutes on 2 CPU cores.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from stamp import stamp, write
from vaelab.runs.config import TrainConfig
from vaelab.training.loop import train

RUNS = {  # name: (budget as a share of B, config fields)
    "cosine, raw weights": (1.0, {"cosine": True}),
    "cosine, EMA": (1.0, {"cosine": True, "ema": 0.999}),
    "constant, raw weights": (1.0, {}),
    "constant, EMA": (1.0, {"ema": 0.999}),
    "cosine over B/2, raw weights": (0.5, {"cosine": True}),
    "cosine over B/2, EMA": (0.5, {"cosine": True, "ema": 0.999}),
}


def one(name: str, steps: int, data_dir: str | None) -> dict:
    torch.set_num_threads(1)
    share, fields = RUNS[name]
    cfg = TrainConfig(
        dataset="fashion-mnist", latent_dim=16, epochs=10_000, budget=f"{int(steps * share)}steps", **fields
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, Path(tmp) / "run", data_dir=data_dir, progress=False)
        history = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return {
        "name": name,
        "budget_steps": int(steps * share),
        "val_neg_elbo": {r["step"]: r["val_neg_elbo"] for r in history},
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--steps", type=int, default=3440)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    with ProcessPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, RUNS, [args.steps] * len(RUNS), [args.data_dir] * len(RUNS)))
    half = args.steps // 2
    summary = {
        r["name"]: {"at B/2": r["val_neg_elbo"].get(half), "at end": list(r["val_neg_elbo"].values())[-1]} for r in runs
    }
    write(args.json, {**stamp(), "steps": args.steps, "summary": summary, "runs": runs}, summary)


if __name__ == "__main__":
    main()

"""Time to a test negative ELBO: vaelab's training recipe vs a minimal hand-written loop on Fashion-MNIST; one JSON line.

Both train the reference conv VAE (latent 16, Bernoulli likelihood) and stop at the end of the first epoch whose
negative ELBO on the whole test set (one posterior sample per image, seed fixed) is at or below --target nats.
The clock counts training only (the end-of-epoch checks are excluded for both). Repetitions are interleaved so
that the machine's drift hits both alike. vaelab's recipe is its defaults plus the lever flags given here
(--bf16, --lr, --cosine, --batch-size, --threads), so each lever can be measured on its own.

Usage: python bench/time_to_elbo.py [--reps 3] [--target 247] [--max-epochs 15] [--bf16] [--lr 1e-3] [--cosine]
Needs the real Fashion-MNIST (VAELAB_DATA or --data-dir).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time

import torch
import torch.nn.functional as F

from vaelab import data as vdata
from vaelab.models import VAE
from vaelab.runs.config import TrainConfig
from vaelab.training.epochs import average_terms
from vaelab.training.loop import train


class Reached(Exception):
    pass


def test_neg_elbo(model, test: vdata.Split) -> float:
    torch.manual_seed(0)
    return average_terms(model, test)["neg_elbo"]


def minimal_loop(ds: vdata.Dataset, test: vdata.Split, target: float, max_epochs: int, seed: int) -> dict:
    """The same conv model, BCE + KL, Adam 1e-3, batch 128, fp32, random-permutation batches; nothing else."""
    torch.manual_seed(seed)
    model = VAE(ds.shape, 16, "conv", "bernoulli")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x_all = torch.from_numpy(ds.x_train)
    trained, value = 0.0, float("inf")
    for epoch in range(1, max_epochs + 1):
        model.train()
        t0 = time.perf_counter()
        for idx in torch.randperm(len(x_all)).split(128):
            x = x_all[idx]
            mu, logvar = model.encode(x)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            recon = F.binary_cross_entropy_with_logits(model.decode(z), x.float() / 255, reduction="sum") / len(x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / len(x)
            opt.zero_grad()
            (recon + kl).backward()
            opt.step()
        trained += time.perf_counter() - t0
        value = test_neg_elbo(model, test)
        if value <= target:
            return {"seconds": trained, "epochs": epoch, "neg_elbo": value, "reached": True}
    return {"seconds": trained, "epochs": max_epochs, "neg_elbo": value, "reached": False}


def vaelab_recipe(cfg: TrainConfig, ds: vdata.Dataset, test: vdata.Split, target: float) -> dict:
    from vaelab.runs.run import Run

    seen: dict = {}
    with tempfile.TemporaryDirectory() as tmp:

        def check(epoch: int, row: dict) -> None:
            _, model, _ = Run(tmp).load()
            seen.update(epoch=epoch, neg_elbo=test_neg_elbo(model, test))
            if seen["neg_elbo"] <= target:
                raise Reached

        try:
            train(cfg, tmp, dataset=ds, progress=False, on_epoch_end=check)
            reached = False
        except Reached:
            reached = True
        from vaelab.runs.checkpoint import load_checkpoint

        seconds = sum(h["seconds"] for h in load_checkpoint(tmp)["history"])
    return {"seconds": seconds, "epochs": seen.get("epoch"), "neg_elbo": seen.get("neg_elbo"), "reached": reached}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--target", type=float, default=247.0)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--bf16", action="store_true", help="vaelab: bf16 autocast (CPU or CUDA)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cosine", action="store_true")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = vdata.load("fashion-mnist", args.data_dir)
    test = vdata.to_split(ds.x_test, ds.y_test, "cpu")
    rows = []
    for rep in range(args.reps):
        cfg = TrainConfig(
            dataset="fashion-mnist",
            latent_dim=16,
            likelihood="bernoulli",
            epochs=args.max_epochs,
            val_size=0,
            iwae_samples=1,
            device="cpu",
            seed=rep,
            bf16=args.bf16,
            lr=args.lr,
            cosine=args.cosine,
            batch_size=args.batch_size,
        )
        mine = vaelab_recipe(cfg, ds, test, args.target)
        ref = minimal_loop(ds, test, args.target, args.max_epochs, rep)
        rows.append(
            {
                "rep": rep,
                "vaelab": mine,
                "minimal": ref,
                "ratio": mine["seconds"] / ref["seconds"] if mine["reached"] and ref["reached"] else None,
            }
        )
    ratios = sorted(r["ratio"] for r in rows if r["ratio"] is not None)
    print(
        json.dumps(
            {
                "bench": "time_to_elbo",
                "target_nats": args.target,
                "recipe": {k: getattr(args, k) for k in ("bf16", "lr", "cosine", "batch_size")},
                "median_ratio": ratios[len(ratios) // 2] if ratios else None,
                "runs": rows,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()

"""How near its peak the reference training step runs: this CPU's (or GPU's) GEMM peak in fp32 and bf16, the
reference step's FLOPs (torch.utils.flop_counter) and achieved FLOP/s in both precisions, and where the bf16 step's
time goes (torch.profiler, by kind of operator); one JSON line.

Usage: python bench/roofline.py [--device auto|cpu|cuda] [--steps 40] [--batch-size 128] [--latent-dim 16]
       [--likelihood bernoulli] [--channels-last] [--threads N] [--bf16] [--out FILE]
bf16 is measured where the device computes it natively (core.device.bf16_native), or with --bf16.
The reference step is the project's reference VAE (Fashion-MNIST shape, conv, Bernoulli, latent 16, batch 128):
vaelab's model forward (named terms), its objective, backward and its fused Adam — the compute of one
`vaelab train` step without the data path. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stamp import stamp
from vaelab.core.device import bf16_native, resolve_device
from vaelab.models import build
from vaelab.models.losses import draws, objective
from vaelab.runs.config import TrainConfig
from vaelab.training.optim import make_optimizer

KINDS = {  # operator name fragments -> the kind of work the issue asks to separate (first match wins)
    "gemm/conv": ("conv", "mm", "matmul", "linear", "mkldnn"),
    "optimiser": ("adam", "_foreach"),
    "likelihood/KL": ("binary_cross_entropy", "log_sigmoid", "softplus", "logsumexp"),
}
LIKELIHOOD_OPS = {"aten::exp", "aten::log", "aten::exp_", "aten::log_", "ExpBackward0", "LogBackward0"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(dtype: torch.dtype, device: torch.device, sizes=(1024, 2048, 3072), reps: int = 10) -> float:
    """The best GFLOP/s of square matrix products at these sizes (2 n^3 FLOPs each)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b  # noqa: B018 - warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b  # noqa: B018
        _sync(device)
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def reference_step(args, device: torch.device):
    """(step(), the model, its config): one optimiser step of the reference VAE on a fixed random batch."""
    torch.manual_seed(0)
    cfg = TrainConfig(
        dataset="fashion-mnist", latent_dim=args.latent_dim, batch_size=args.batch_size, likelihood=args.likelihood
    )
    model = build(cfg, (1, 28, 28)).to(device)
    x = torch.randint(0, 256, (args.batch_size, 1, 28, 28), dtype=torch.uint8, device=device)
    if args.channels_last:  # as `vaelab train --channels-last`
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, model)

    def step(bf16: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            terms = model(x, **draws(cfg))
        loss = objective(terms, 1.0, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step(False)
    return int(counter.get_total_flops())


def step_seconds(step, bf16: bool, steps: int, device: torch.device) -> float:
    for _ in range(5):
        step(bf16)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(bf16)
    _sync(device)
    return (time.perf_counter() - t0) / steps


def breakdown(step, bf16: bool, device: torch.device) -> dict[str, float]:
    """Share of the step's self time by kind of operator (torch.profiler over 10 steps)."""
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(10):
            step(bf16)
        _sync(device)
    times: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        t = e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total
        name = e.key.lower()
        kind = next((k for k, frags in KINDS.items() if any(f in name for f in frags)), "elementwise/other")
        kind = "likelihood/KL" if e.key in LIKELIHOOD_OPS else kind
        times[kind] += t
    total = sum(times.values()) or 1.0
    return {k: round(v / total, 3) for k, v in sorted(times.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--likelihood", default="bernoulli")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="measure bf16 also where it is emulated")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    step = reference_step(args, device)
    flops = step_flops(step)
    result = {**stamp(), "device": str(device), "threads": torch.get_num_threads(), "step_mflops": flops / 1e6}
    result["channels_last"] = args.channels_last
    # bf16 where the device computes it natively: emulated (an AVX2-only CPU) its GEMMs take minutes and say nothing
    # about a recipe anyone would run there (a step 10-17x its fp32 time, 2026-12-08)
    result["bf16_native"] = native = bf16_native(device)
    precisions = ("fp32", "bf16") if native or args.bf16 else ("fp32",)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    result["gemm_peak_gflops"] = {p: gemm_peak(dtypes[p], device) for p in precisions}
    seconds = {p: step_seconds(step, p == "bf16", args.steps, device) for p in precisions}
    result["train_gflops"] = {p: flops / s / 1e9 for p, s in seconds.items()}
    result["share_of_peak"] = {p: result["train_gflops"][p] / result["gemm_peak_gflops"][p] for p in seconds}
    result["images_per_s"] = {p: args.batch_size / s for p, s in seconds.items()}
    if "bf16" in precisions:
        result["bf16_time_by_kind"] = breakdown(step, True, device)
    result["fp32_time_by_kind"] = breakdown(step, False, device)
    line = json.dumps(
        {k: (({kk: round(vv, 3) for kk, vv in v.items()}) if isinstance(v, dict) else v) for k, v in result.items()}
    )
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()

"""Test-set evaluation: ELBO terms, KL per dimension, active units, IWAE, bits/dim, PSNR, SSIM, disentanglement."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vaelab import data as vdata
from vaelab.core.device import bf16_native, check_fits, resolve_device
from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_json, check_run_dir
from vaelab.data import FactorGrid
from vaelab.evaluation import disentangle
from vaelab.evaluation.codes import encode_split, organisation, probe_baselines
from vaelab.evaluation.metrics import computed
from vaelab.models import VAE
from vaelab.models import build as build_model
from vaelab.models.losses import bits_per_dim
from vaelab.runs.checkpoint import load_snapshot
from vaelab.runs.config import snapshot_fractions
from vaelab.runs.run import Run

AU_THRESHOLD = 0.01  # Burda et al. 2016, section 5.2
# which weights a run's model holds, by (--ema, --patience): eval.json says which it scored
WEIGHT_LABELS = {(False, False): "last", (True, False): "ema", (False, True): "best", (True, True): "best ema"}


PRECISIONS = ("auto", "bf16", "fp32")


def iwae_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise VaelabError(f"unknown precision '{precision}' (known: {', '.join(PRECISIONS)})")
    return ("bf16" if bf16_native(device) else "fp32") if precision == "auto" else precision


@torch.inference_mode()
def iwae_nll(
    model: VAE, x: torch.Tensor, y: torch.Tensor | None, k: int, max_batch: int = 4096, bf16: bool = False
) -> torch.Tensor:
    """-log p(x) bound per image from K importance samples (Burda et al. 2016, eq. 8), in nats. With `bf16` the
    networks run under bf16 autocast; the decoder's output layer, the likelihood and the log-weights stay fp32
    (models.nets.fp32_out). That keeps a confident decoder's bound within Monte-Carlo noise of fp32
    (tests/test_evaluate.py), but a trained discretized-logistic model moved by 2.7x the seed-to-seed spread
    (bench/evaluate_speed.py), hence fp32 by default."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        log_w = model.log_weights(x, y, k, max_batch)
    return -(torch.logsumexp(log_w.float(), dim=1) - math.log(k))


def active_units(mu: torch.Tensor, threshold: float = AU_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Units whose posterior mean varies across the data: Cov_x(E_q[z_i]) > 0.01 (Burda et al. 2016, eq. 12)."""
    var = mu.var(0, unbiased=True) if len(mu) > 1 else torch.zeros(mu.shape[1], dtype=mu.dtype, device=mu.device)
    return int((var > threshold).sum()), var


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per image (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid region.
    Images smaller than 11 pixels (a user's npz may hold them) get the largest odd window that fits, its sigma
    scaled alike (as scikit-image does for a sigma whose window is that size)."""
    c = a.shape[1]
    size = min(11, a.shape[-2], a.shape[-1])
    size -= 1 - size % 2  # odd: the window is centred on a pixel
    w = _gaussian_window(size, 1.5 * size / 11).to(a)[None, None].expand(c, 1, size, size)
    filt = lambda t: F.conv2d(t, w, groups=c)  # noqa: E731
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return 10 * torch.log10(data_range**2 / mse)


@torch.no_grad()
def evaluate_model(
    model: VAE,
    split: vdata.Split,
    iwae_samples: int = 100,
    batch_size: int = 500,
    seed: int = 0,
    probe: vdata.Split | None = None,
    untrained: VAE | None = None,
    precision: str = "fp32",
) -> dict:
    """All test-set metrics for a model, per image in nats (and bits/dim where the likelihood is discrete).

    With `probe` (labelled training images), also the latent organisation: linear-probe and k-NN accuracy of
    classifiers fit on the probe images' codes, and the silhouette of the test codes, with chance levels; with
    `untrained` (the same architecture at its initial weights) also the probe's baselines. `precision`
    (auto, bf16, fp32) is the IWAE's: its K decoder passes per image are ~85 % of the time.
    """
    precision = iwae_precision(precision, split.x.device)
    model.eval()
    # channels-last convolutions: 1.35x faster decoding on this CPU with identical numbers (bench: the IWAE's
    # decoder passes are ~85 % of evaluation); a no-op for dense layers
    model.to(memory_format=torch.channels_last)
    torch.manual_seed(seed)
    acc = _accumulate(model, split, iwae_samples, batch_size, precision)
    n = len(split)
    out = _terms_of(model, acc, n, iwae_samples, precision)
    mu = torch.cat(acc["mus"])
    if acc["group_mus"]:
        out["kl_per_group"] = (acc["kl_groups"] / n).tolist()
        finest = out["kl_per_group"][-model.group_size :]  # the groups at the highest latent resolution
        out["kl_share_finest"] = sum(finest) / max(sum(out["kl_per_group"]), 1e-12)
        out["active_units_per_group"] = [active_units(torch.cat(g))[0] for g in zip(*acc["group_mus"])]
    if probe is not None and len(np.unique(probe.y.cpu().numpy())) > 1:
        mu_probe, _ = encode_split(model, probe)
        out.update(
            organisation(
                mu_probe.cpu().double().numpy(), probe.y.cpu().numpy(), mu.cpu().numpy(), split.y.cpu().numpy()
            )
        )
        if untrained is not None:
            out.update(probe_baselines(untrained, probe, split, seed))
    if model.likelihood.discrete:
        out["bpd_elbo"] = bits_per_dim(out["neg_elbo"], model.n_dims)
        out["bpd_iwae"] = bits_per_dim(out["iwae_nll"], model.n_dims)
    return out


def _terms_of(model: VAE, acc: dict, n: int, iwae_samples: int, precision: str) -> dict:
    """The test-set means of one pass (_accumulate) and the model's facts, as eval.json names them."""
    mean = {k: v / n for k, v in acc["sums"].items()}
    n_active, au_var = active_units(torch.cat(acc["mus"]))
    return {
        "neg_elbo": mean["recon"] + mean["kl"],
        "recon": mean["recon"],
        "kl": mean["kl"],
        "iwae_nll": mean["iwae"],
        "iwae_samples": iwae_samples,
        "iwae_precision": precision,
        **({"kl_per_dim": (acc["kl_dims"] / n).tolist()} if model.analytic_kl else {}),
        "active_units": n_active,
        "au_variance": au_var.tolist(),
        "latent_dim": model.latent_dim,
        "psnr": mean["psnr"],
        "ssim": mean["ssim"],
        "test_size": n,
        "n_dims": model.n_dims,
        "likelihood_discrete": model.likelihood.discrete,
        # how the KL term was computed: in closed form (Gaussian q, N(0, I) p; per group for the hierarchical
        # model) or as the one-sample Monte-Carlo estimate log q(z|x) - log p(z)
        "kl_estimator": "analytic" if (model.analytic_kl or acc["group_mus"]) else "monte carlo",
        "n_params": sum(p.numel() for p in model.parameters()),
        **{m.name: mean[m.name] for m in computed()},
    }


def _accumulate(model: VAE, split: vdata.Split, iwae_samples: int, batch_size: int, precision: str) -> dict:
    """One pass over the split: sums of the per-image terms, KL per dimension and per group, and the codes."""
    sums = {"recon": 0.0, "kl": 0.0, "iwae": 0.0, "psnr": 0.0, "ssim": 0.0, **{m.name: 0.0 for m in computed()}}
    kl_dims = torch.zeros(model.latent_dim, dtype=torch.float64, device=split.x.device)
    mus, kl_groups, group_mus = [], 0.0, []
    for idx in vdata.minibatches(len(split), batch_size, device=split.x.device, shuffle=False):
        x = split.x[idx]
        y = split.y[idx] if model.num_classes else None
        t = model(x, y)
        sums["recon"] += t["recon"].double().sum().item()
        sums["kl"] += t["kl"].double().sum().item()
        if "kl_per_dim" in t:  # analytic KL only (a learned prior does not factorise over dimensions)
            kl_dims += t["kl_per_dim"].double().sum(0)
        mus.append(t["mu"].double())
        if "kl_per_group" in t:  # a hierarchical model: KL and active units per group of latents
            kl_groups = kl_groups + t["kl_per_group"].double().sum(0)
            group_mus.append([m.double() for m in model.group_means(x)])
        sums["iwae"] += iwae_nll(model, x, y, iwae_samples, bf16=precision == "bf16").double().sum().item()
        xf, xr = vdata.to_float(x), model.reconstruct(x, y)
        sums["psnr"] += psnr(xf, xr).double().sum().item()
        sums["ssim"] += ssim(xf, xr).double().sum().item()
        for m in computed():  # registered metrics: the test-set mean of their per-image values
            sums[m.name] += m.per_image(model, x, y, t).double().sum().item()
    return {"sums": sums, "kl_dims": kl_dims, "mus": mus, "kl_groups": kl_groups, "group_mus": group_mus}


PROBE_TRAIN = 10000  # training codes for the probes: plenty for a linear probe, cheap to encode


def probe_split(cfg, ds: vdata.Dataset, device) -> vdata.Split:
    """Labelled training images that fit the latent probes: the run's own training split (on another dataset,
    via --on, its whole training split), at most PROBE_TRAIN of them."""
    own = ds.name == cfg.dataset
    tr, _ = vdata.split_indices(len(ds.x_train), cfg.val_size if own else 0, cfg.train_size if own else 0)
    tr = vdata.subsample(tr, PROBE_TRAIN)
    return vdata.to_split(ds.x_train[tr], ds.y_train[tr], device)


def _check_request(cfg, model, test_size: int, iwae_samples: int, on: str | None, dev) -> None:
    """Refuse sizes and datasets that cannot be evaluated, before anything is computed."""
    if test_size < 0:
        raise VaelabError(f"test_size must be >= 0 (0 = the whole test set), got {test_size}")
    if iwae_samples < 1:
        raise VaelabError(f"iwae_samples must be >= 1, got {iwae_samples}")
    # log-weights of one batch (500 x K floats) plus one decoded chunk of at most 4096 images
    check_fits(
        4 * (500 * iwae_samples + 4096 * (model.n_outputs + 2 * model.n_dims)),
        f"the IWAE bound with K = {iwae_samples}",
        dev,
    )
    if on is not None and on != cfg.dataset:
        if vdata.spec(on).shape != vdata.spec(cfg.dataset).shape:
            raise VaelabError(
                f"--on {on}: needs a dataset of the run's image shape "
                f"({'x'.join(map(str, vdata.spec(cfg.dataset).shape))})"
            )


def evaluate(
    run_dir: str | Path,
    data_dir=None,
    test_size: int | None = None,
    iwae_samples: int | None = None,
    device: str | None = None,
    dataset: vdata.Dataset | None = None,
    write: bool = True,
    on: str | None = None,
    raw: bool = False,
    disentanglement_sizes=None,
    precision: str = "fp32",
    snapshot: float | None = None,
) -> dict:
    """Evaluate a trained run on its dataset's test set and write eval.json atomically.

    `on` names another dataset of the same image shape to test on (e.g. the CIFAR-10 model on the real pixels
    of cifar10-lossless); its result goes to eval-<on>.json so the run's own eval.json is kept. `raw` evaluates
    the raw latest weights of a run trained with --ema or --patience instead of its model, into eval[-<on>]-raw.json.
    On a factor dataset eval.json also holds the disentanglement scores, from `disentanglement_sizes` samples
    (default disentangle.Sizes()). `precision` is the IWAE's: fp32 (default), bf16, or auto (bf16 where native);
    bf16 moved a discretized-logistic IWAE by 2.7x the seed spread (bench/evaluate_speed.py): not for comparisons.
    `snapshot` evaluates the model kept at that fraction of the budget (TrainConfig.snapshots) into its own file.
    """
    run_dir = check_run_dir(Path(run_dir))
    if snapshot is not None and (raw or on is not None):  # it keeps only the evaluated weights, for its own data
        raise VaelabError("a snapshot is evaluated alone: --snapshot does not combine with --raw or --on")
    dev = resolve_device(device or "auto")
    precision = iwae_precision(precision, dev)
    cfg, model, ckpt = _model_to_evaluate(Run(run_dir), dev, raw, snapshot)
    test_size = cfg.test_size if test_size is None else test_size
    iwae_samples = cfg.iwae_samples if iwae_samples is None else iwae_samples
    _check_request(cfg, model, test_size, iwae_samples, on, dev)
    name = on or cfg.dataset
    ds = dataset if dataset is not None else vdata.load(name, data_dir)
    te = vdata.test_indices(len(ds.x_test), test_size)
    split = vdata.to_split(ds.x_test[te], ds.y_test[te], dev)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)  # as train() does before building the model: the run's own initial weights
    untrained = build_model(cfg, model.shape, len(ckpt["classes"])).to(dev).eval()
    result = evaluate_model(
        model, split, iwae_samples, probe=probe_split(cfg, ds, dev), untrained=untrained, precision=precision
    )
    if ds.factors_train is not None:  # a factor dataset: how disentangled the code is (vaelab.evaluation.disentangle)
        t1 = time.perf_counter()
        sizes = disentanglement_sizes or disentangle.Sizes()
        result["disentanglement"] = disentangle.model_scores(model, FactorGrid(ds), sizes, seed=0)
        result["disentanglement"]["seconds"] = time.perf_counter() - t1
    result.update(
        dataset=name,
        epoch=ckpt["epoch"],
        eval_seconds=time.perf_counter() - t0,
        weights=_weights_label(cfg, raw, snapshot),
        step=ckpt.get("step"),
    )
    _check_finite(run_dir, result)
    if write:
        atomic_write_json(_eval_out_path(Run(run_dir), name, raw, snapshot), result)
    return result


def evaluate_snapshots(run_dir: str | Path, data_dir=None, dataset: vdata.Dataset | None = None) -> list[float]:
    """Evaluate every snapshot a run kept as eval.json is evaluated, the IWAE at the run's own K, so that a verdict
    along training compares the same quantity at every fraction; a snapshot scored at another K (vaelab < 0.3
    used K <= 5) is scored again. Returns the fractions evaluated."""
    run = Run(check_run_dir(Path(run_dir)))
    cfg = run.config
    todo = [f for f in snapshot_fractions(cfg.snapshots) if run.snapshot_path(f).is_file()]
    todo = [f for f in todo if (run.snapshot_eval(f) or {}).get("iwae_samples") != cfg.iwae_samples]
    if todo and dataset is None:
        dataset = vdata.load(cfg.dataset, data_dir)
    for f in todo:
        evaluate(run.path, dataset=dataset, iwae_samples=cfg.iwae_samples, snapshot=f)
    return todo


def _check_finite(run_dir: Path, result: dict) -> None:
    bad = [k for k in ("neg_elbo", "iwae_nll") if not math.isfinite(result[k])]
    if bad:  # a model that gives NaN is a diverged run, never a result
        raise VaelabError(
            f"{run_dir}: the model gives a non-finite {' and '.join(bad)} on the test set; "
            "it diverged (retrain with a lower --lr)"
        )


def _model_to_evaluate(run: Run, dev, raw: bool, snapshot: float | None) -> tuple:
    if snapshot is None:
        return run.load(dev, "train_model" if raw else "model")
    kept = snapshot_fractions(run.config.snapshots)
    if snapshot not in kept:
        raise VaelabError(
            f"{run.path}: keeps no snapshot at {snapshot:g} "
            + (f"(it keeps {', '.join(f'{f:g}' for f in kept)})" if kept else "(trained without --snapshots)")
        )
    return load_snapshot(run.snapshot_path(snapshot), dev)


def _weights_label(cfg, raw: bool, snapshot: float | None) -> str:
    if raw:
        return "raw"
    if snapshot is not None:  # a snapshot holds the weights validation read at that moment (no best epoch)
        return f"{'ema' if cfg.ema else 'last'} at {snapshot:g} of the budget"
    return WEIGHT_LABELS[bool(cfg.ema), bool(cfg.patience)]


def _eval_out_path(run: Run, name: str, raw: bool, snapshot: float | None) -> Path:
    if snapshot is not None:
        return run.snapshot_eval_path(snapshot)
    path = run.eval_path(name)
    return path.with_name(f"{path.stem}-raw.json") if raw else path

"""Reference classifiers (a small CNN per dataset, trained once and cached) and generation scores built on them."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as vdata
from .store import atomic_torch_save

VERSION = 1  # bump when the network or its training recipe changes: old cache entries are then ignored
EPOCHS = {"fashion-mnist": 6, "cifar10": 18, "cifar10-lossless": 30}


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv stages (64-128-256, BatchNorm, max-pool), global average pool: 256-d features, 10 logits."""

    def __init__(self, channels: int, n_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(_block(channels, 64), nn.MaxPool2d(2), _block(64, 128), nn.MaxPool2d(2),
                                 _block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(256, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: images in [0, 1], (B, C, H, W)."""
        return self.net(x * 2 - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def predict(model: SmallCNN, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, features) for images in [0, 1]."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        f = model.features(x[i:i + batch_size].float())
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


def train_classifier(ds: vdata.Dataset, epochs: int, seed: int = 0, batch_size: int = 128,
                     device: str = "cpu") -> tuple[SmallCNN, float]:
    """Adam + one-cycle schedule, random flips and 2-pixel shifts; returns the model and its test accuracy."""
    torch.manual_seed(seed)
    model = SmallCNN(ds.shape[0]).to(device)
    x = torch.from_numpy(ds.x_train).to(device)
    y = torch.from_numpy(ds.y_train).to(device)
    steps = epochs * math.ceil(len(x) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps)
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for idx in vdata.minibatches(len(x), batch_size, g, device):
            xb = vdata.to_float(x[idx])
            flip = torch.rand(len(xb), device=device, generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g, device=device))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    logits, _ = predict(model, vdata.to_float(torch.from_numpy(ds.x_test).to(device)))
    return model, float((logits.argmax(1).cpu() == torch.from_numpy(ds.y_test)).float().mean())


def reference_classifier(dataset: str, data_dir=None, epochs: int | None = None,
                         ds: vdata.Dataset | None = None) -> tuple[SmallCNN, dict]:
    """The dataset's reference classifier: loaded from the user cache, trained (once) when absent."""
    ds = ds if ds is not None else vdata.load(dataset, data_dir)
    epochs = epochs or EPOCHS.get(dataset, 10)
    key = f"{dataset}-n{len(ds.x_train)}-{vdata._source_key(Path(ds.source)) if Path(ds.source).exists() else 'mem'}"
    path = vdata.cache_dir() / "classifiers" / f"{key}-e{epochs}-v{VERSION}.pt"
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=False)
        model = SmallCNN(ds.shape[0])
        model.load_state_dict(blob["model"])
        return model.eval(), blob["info"]
    t0 = time.perf_counter()
    model, acc = train_classifier(ds, epochs)
    info = {"dataset": dataset, "epochs": epochs, "test_accuracy": acc, "train_seconds": time.perf_counter() - t0}
    atomic_torch_save(path, {"model": model.state_dict(), "info": info})
    return model.eval(), info


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two feature sets
    (Heusel et al. 2017). Computed in the reference classifier's features, so: not Inception FID."""
    from scipy import linalg

    mu_a, mu_b = feat_a.mean(0), feat_b.mean(0)
    s_a, s_b = np.cov(feat_a, rowvar=False), np.cov(feat_b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", linalg.LinAlgWarning)
        try:
            covmean = linalg.sqrtm(s_a @ s_b)
            ok = np.isfinite(covmean).all()
        except linalg.LinAlgWarning:
            ok = False
    if not ok:  # singular product (fewer samples than features): regularise as the reference implementation does
        eps = 1e-6 * np.eye(len(s_a))
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean.real))


def generation_scores(run_dir, data_dir=None, n: int = 2000, seed: int = 0) -> dict:
    """Score a run's samples with the reference classifier: conditional accuracy, class histogram, Fréchet distance."""
    from .train import load_model

    cfg, model, ckpt = load_model(run_dir)
    ds = vdata.load(cfg.dataset, data_dir)
    clf, info = reference_classifier(cfg.dataset, data_dir, ds=ds)  # trains (with gradients) on first use
    with torch.no_grad():
        return _scores(model, clf, info, ds, ckpt, run_dir, data_dir, n, seed)


def _scores(model, clf, info, ds, ckpt, run_dir, data_dir, n, seed) -> dict:
    from .latent import CodeSampler, decode_mean

    te = vdata.test_indices(len(ds.x_test), min(n, len(ds.x_test)))
    _, f_test = predict(clf, vdata.to_float(torch.from_numpy(ds.x_test[te])))
    n_classes = len(ckpt["classes"])
    out: dict = {"classifier_test_accuracy": info["test_accuracy"], "n_samples": n}
    codes = CodeSampler.for_run(run_dir, data_dir, dataset=ds)
    for sampler in ("prior", "gmm"):
        z = torch.as_tensor(codes.sample(n, sampler, seed=seed), dtype=torch.float32)
        y = torch.arange(n) % n_classes if model.num_classes else None
        logits, feats = predict(clf, decode_mean(model, z, y))
        hist = torch.bincount(logits.argmax(1), minlength=n_classes).float() / n
        out[f"fd_{sampler}"] = frechet_distance(feats.double().numpy(), f_test.double().numpy())
        out[f"class_histogram_{sampler}"] = hist.tolist()
    per_class = n // n_classes
    hits = 0
    for k in range(n_classes):  # class-conditional: the CVAE's decoder, or per-class Gaussians on the codes
        sampler = "prior" if model.num_classes else "class-gaussian"
        z = torch.as_tensor(codes.sample(per_class, sampler, k, seed + k), dtype=torch.float32)
        y = torch.full((per_class,), k) if model.num_classes else None
        logits, _ = predict(clf, decode_mean(model, z, y))
        hits += int((logits.argmax(1) == k).sum())
    out["conditional_accuracy"] = hits / (per_class * n_classes)
    return out

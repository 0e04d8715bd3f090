"""Shared fixtures: tiny synthetic datasets written in the official formats, and an isolated cache."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, arr: np.ndarray, compress: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def make_images(rng, n, shape, labels):
    """Images whose brightness pattern depends on the class, so a model has something to learn."""
    x = rng.integers(0, 40, (n, *shape), dtype=np.int64)
    c, h, w = shape
    for i, y in enumerate(labels):
        x[i, :, (y * h) // 10 : (y * h) // 10 + h // 3, :] += 200
    return np.clip(x, 0, 255).astype(np.uint8)


def write_fashion(folder: Path, n_train=240, n_test=60, seed=0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n)
        x = make_images(rng, n, (1, 28, 28), y)[:, 0]
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)


CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_members(n_per_batch=24, n_test=40, seed=0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {"batches.meta": pickle.dumps({b"label_names": [n.encode() for n in CIFAR_NAMES]})}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        y = rng.integers(0, 10, n)
        x = make_images(rng, n, (3, 32, 32), y).reshape(n, -1)
        out[name] = pickle.dumps({b"data": x, b"labels": y.tolist(), b"batch_label": name.encode()})
    return out


def write_cifar_tar(path: Path, members: dict[str, bytes], mode="w:gz") -> None:
    with tarfile.open(path, mode) as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-data cache and never downloads."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("VAELAB_NO_DOWNLOAD", "1")
    monkeypatch.delenv("VAELAB_DATA", raising=False)  # tests name their data folder; real_data_dir reads it first


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A data root with tiny Fashion-MNIST (IDX .gz), CIFAR-10 (tar.gz of the pickle batches) and shapes2d (its
    renderer on a small factor grid, in dSprites' npz layout)."""
    from vaelab.data.factors import generate

    root = tmp_path_factory.mktemp("data")
    write_fashion(root / "fashion-mnist")
    write_cifar_tar(root / "cifar-10-python.tar.gz", cifar_members())
    generate(root, TINY_SHAPES)
    return root


TINY_SHAPES = (3, 2, 4, 4, 4)  # shapes2d's factor grid in tests: 384 images


REAL_DATA = os.environ.get("VAELAB_DATA")  # read at import, before the autouse fixture hides it


@pytest.fixture(scope="session")
def real_data_dir() -> Path | None:
    """The real datasets' folder when $VAELAB_DATA points at one (CI sets it to ../shared/data)."""
    return Path(REAL_DATA) if REAL_DATA and Path(REAL_DATA).is_dir() else None


def check_two_stochastic_layers(model, latent_dim: int = 3) -> dict:
    """What a two-stochastic-layer model must offer on 6x6 binary images: the flat VAE's named terms, log-weights
    that are its K-draw terms at the same noise, and an IWAE bound that tightens with K; returns the one-draw terms."""
    import math

    import torch

    x = (torch.rand(5, 1, 6, 6) < 0.4).to(torch.uint8) * 255
    t = model(x)
    assert t["recon"].shape == t["kl"].shape == (5,) and t["mu"].shape == t["z"].shape == (5, latent_dim)
    assert torch.allclose(t["elbo"], -(t["recon"] + t["kl"]))
    torch.manual_seed(1)
    k_terms = model(x, k=6)
    torch.manual_seed(1)
    log_w = model.log_weights(x, None, 6)  # one chunk: the same noise stream
    assert torch.allclose(k_terms["log_px"] + k_terms["log_ratio"], log_w, atol=1e-4)
    with torch.no_grad():  # the IWAE bound tightens with K in expectation (Burda et al. 2016, theorem 1)
        w = model.log_weights(x, None, 2000)
    bounds = [(torch.logsumexp(w.view(5, -1, k), 2) - math.log(k)).mean().item() for k in (1, 10, 2000)]
    assert bounds[0] < bounds[1] < bounds[2]
    assert model.reconstruct(x).shape == x.shape
    assert model.decode(torch.zeros(2, latent_dim)).shape == (2, 1, 6, 6)
    return t


def tiny_config(**kw):
    from vaelab.runs.config import TrainConfig

    base = dict(
        dataset="fashion-mnist",
        latent_dim=4,
        epochs=1,
        batch_size=32,
        val_size=40,
        test_size=0,
        iwae_samples=5,
        device="cpu",
    )
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------- reliability counts, measured by the tests
# Tests that try bad inputs, kills, concurrent writers and malicious files add to these counters; the totals are
# printed at the end of the run and written to build/reliability.json (the README's Reliability table).
RELIABILITY: dict[str, int] = {}


def count(key: str, n: int = 1) -> None:
    RELIABILITY[key] = RELIABILITY.get(key, 0) + n


def pytest_configure(config):
    # Under pytest-xdist (make test runs one worker per core) each worker gets an even share of the cores for
    # torch, so two workers on two cores do not oversubscribe them; subprocesses the tests start choose their own.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_sessionfinish(session):
    # An xdist worker hands its counts to the controller, which adds them up (pytest_testnodedown).
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["reliability"] = dict(RELIABILITY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # the controller side of pytest-xdist
    for key, n in getattr(node, "workeroutput", {}).get("reliability", {}).items():
        count(key, n)


def pytest_terminal_summary(terminalreporter):
    if not RELIABILITY or hasattr(terminalreporter.config, "workeroutput"):
        return
    import json

    out = Path(__file__).parent.parent / "build" / "reliability.json"
    try:
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(dict(sorted(RELIABILITY.items())), indent=2) + "\n")
    except OSError:
        pass
    terminalreporter.write_line("reliability: " + ", ".join(f"{k} {v}" for k, v in sorted(RELIABILITY.items())))


def quick_classifier(monkeypatch, epochs: int = 2):
    """The dataset spec says how long its reference classifier trains: two epochs are enough for tests."""
    import dataclasses

    from vaelab import data as vdata

    spec = vdata.DATASETS["fashion-mnist"]
    monkeypatch.setitem(vdata.DATASETS, "fashion-mnist", dataclasses.replace(spec, classifier_epochs=epochs))


def headless_chromium(tmp_path, window: str = "1280,2000"):
    """A headless Chromium driven by selenium, logging the browser console; skips when either is missing
    (Debian packages chromium and chromium-driver; .ci/run installs them)."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "headless Chromium not installed (Debian packages chromium and chromium-driver; .ci/run installs them)"
        )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={window}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)

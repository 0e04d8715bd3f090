"""Smoke test on the real datasets when $VAELAB_DATA has them: training must beat the untrained model."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from vaelab import data as vdata
from vaelab.evaluation.evaluate import evaluate, evaluate_model
from vaelab.models import VAE
from vaelab.training.loop import train


@pytest.mark.realdata
def test_fashion_mnist_2k_images_one_epoch_beats_untrained(real_data_dir, tmp_path):
    if real_data_dir is None or vdata.locate("fashion-mnist", real_data_dir) is None:
        pytest.skip("real Fashion-MNIST not found: set VAELAB_DATA (CI points it at ../shared/data)")
    ds = vdata.load("fashion-mnist", real_data_dir)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert abs(ds.x_train.mean() / 255 - 0.2860) < 1e-3  # the published pixel mean
    cfg = tiny_config(latent_dim=16, train_size=2000, val_size=1000, test_size=1000, iwae_samples=5, batch_size=64)
    torch.manual_seed(cfg.seed)
    untrained = VAE.from_config(cfg, ds.shape)
    te = vdata.test_indices(len(ds.x_test), cfg.test_size)
    before = evaluate_model(untrained, vdata.to_split(ds.x_test[te], ds.y_test[te], "cpu"), iwae_samples=5)
    train(cfg, tmp_path / "r", dataset=ds)
    after = evaluate(tmp_path / "r", data_dir=real_data_dir)
    assert after["neg_elbo"] < before["neg_elbo"]
    assert after["bpd_elbo"] < before["bpd_elbo"] and after["test_size"] == 1000


@pytest.mark.realdata
def test_real_fashion_mnist_verifies_by_content(real_data_dir, tmp_path):
    """The known content hashes are those of the real files: a copy without SHA256SUMS still verifies."""
    import shutil

    src = vdata.locate("fashion-mnist", real_data_dir) if real_data_dir else None
    if src is None:
        pytest.skip("real Fashion-MNIST not found: set VAELAB_DATA (CI points it at ../shared/data)")
    for name in vdata.FASHION_FILES:
        shutil.copy(src / name, tmp_path / name)
        assert vdata.check_file(tmp_path / name)[0] == vdata.VERIFIED
    assert vdata.verify(src)[0] == vdata.VERIFIED

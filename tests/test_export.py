"""Shareable models: export a run to one safetensors file, load it anywhere without running code, sample from it."""

from __future__ import annotations

import json

import pytest
import torch

import vaelab
from conftest import tiny_config
from vaelab import VaelabError
from vaelab.app.cli import main
from vaelab.core.store import load_tree, save_tree
from vaelab.runs.run import Run
from vaelab.training.loop import train


@pytest.mark.parametrize(
    "fields", [{}, {"model": "hierarchical", "width": 4, "depth": 1, "latent_groups": 1, "ema": 0.5}]
)
def test_an_exported_model_loads_with_the_runs_weights_config_and_facts(tiny_root, tmp_path, fields):
    train(tiny_config(epochs=1, train_size=64, **fields), tmp_path / "r", data_dir=tiny_root)
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.safetensors")]) == 0
    cfg, model, ckpt = Run(tmp_path / "r").load()
    got = vaelab.load(tmp_path / "m.safetensors")
    assert got.config == cfg and got.classes == list(ckpt["classes"]) and got.dataset["shape"] == [1, 28, 28]
    assert all(torch.equal(got.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not got.training
    assert main(["sample", str(tmp_path / "m.safetensors"), "--n", "4"]) == 0
    assert (tmp_path / "m-samples.png").stat().st_size > 0


def test_foreign_or_newer_files_are_refused_in_one_line(tiny_root, tmp_path, capsys):
    train(tiny_config(epochs=1, train_size=64), tmp_path / "r", data_dir=tiny_root)
    with pytest.raises(VaelabError, match="not an exported vaelab model"):
        vaelab.load(tmp_path / "r" / "checkpoint.safetensors")
    main(["export", str(tmp_path / "r"), str(tmp_path / "m.safetensors")])
    blob = load_tree(tmp_path / "m.safetensors")
    save_tree(tmp_path / "new.safetensors", {**blob, "version": 99, "versions": {"vaelab": "9.0"}})
    with pytest.raises(VaelabError, match=r"format 99 \(vaelab 9.0\)"):
        vaelab.load(tmp_path / "new.safetensors")
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.pt")]) == 2
    assert "is a .safetensors file" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "m.safetensors"), "--sampler", "gmm"]) == 2
    assert "no training codes" in capsys.readouterr().err
    header = json.loads(
        (tmp_path / "m.safetensors").read_bytes()[
            8 : 8 + int.from_bytes((tmp_path / "m.safetensors").read_bytes()[:8], "little")
        ]
    )
    assert "vaelab" in header["__metadata__"]  # config and facts travel as JSON metadata, never as pickle


@pytest.mark.slow
def test_every_command_that_takes_a_run_takes_an_exported_file(tiny_root, tmp_path, capsys):
    """evaluate, reconstruct, explore and report unpack the file once into a run directory under the user cache and
    give the same numbers as on the run itself; training cannot continue from it."""
    from vaelab.evaluation.evaluate import evaluate

    train(tiny_config(epochs=1, train_size=64), tmp_path / "r", data_dir=tiny_root)
    want = evaluate(tmp_path / "r", data_dir=tiny_root, write=False)
    main(["export", str(tmp_path / "r"), str(tmp_path / "m.safetensors")])
    capsys.readouterr()
    m = str(tmp_path / "m.safetensors")
    assert main(["evaluate", m, "--data-dir", str(tiny_root), "--json"]) == 0
    out, err = capsys.readouterr()
    got = json.loads(out)
    assert got["neg_elbo"] == pytest.approx(want["neg_elbo"]) and got["iwae_nll"] == pytest.approx(want["iwae_nll"])
    unpacked = err.split("unpacked to ")[1].split(" (outputs")[0]
    assert (tmp_path / "r" / "config.json").read_text() != "" and json.loads(
        open(f"{unpacked}/config.json").read()
    ) == json.loads((tmp_path / "r" / "config.json").read_text())
    assert main(["reconstruct", m, "--data-dir", str(tiny_root), "--n", "4"]) == 0
    assert main(["explore", m, "--data-dir", str(tiny_root), "--no-classifier"]) == 0
    assert main(["report", m, "--data-dir", str(tiny_root), "--no-classifier"]) == 0
    capsys.readouterr()
    assert main(["evaluate", m, "--data-dir", str(tiny_root)]) == 0  # the second time: the same directory, reused
    assert unpacked in capsys.readouterr().err
    cfg = tiny_config(epochs=2, train_size=64)
    with pytest.raises(VaelabError, match="no optimizer state"):
        train(cfg, unpacked, data_dir=tiny_root, resume=True)


# ---------------------------------------------------------------- ONNX

ONNX_CASES = {  # every network and both likelihood families (continuous, discrete); grey and colour
    "conv, Bernoulli, grey, conditional": dict(likelihood="bernoulli", conditional=True),
    "mlp, Gaussian, grey, IAF posterior": dict(net="mlp", likelihood="gaussian", posterior="iaf"),
    "resnet, mixture of logistics, colour": dict(dataset="cifar10", net="resnet", width=8, depth=1, likelihood="dmol"),
    "hierarchical, discretized logistic, colour": dict(
        dataset="cifar10", model="hierarchical", width=4, depth=1, latent_groups=1
    ),
    "conv4, Bernoulli, factors": dict(dataset="shapes2d-32", net="conv4", likelihood="bernoulli", val_size=16),
}


@pytest.mark.slow
@pytest.mark.parametrize("fields", ONNX_CASES.values(), ids=ONNX_CASES.keys())
def test_onnxruntime_reproduces_the_posterior_means_and_decoded_images(tiny_root, tmp_path, fields):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnx

    train(tiny_config(epochs=1, train_size=64, **fields), tmp_path / "r", data_dir=tiny_root)
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.onnx")]) == 0
    cfg, model, ckpt = Run(tmp_path / "r").load()
    enc = ort.InferenceSession(str(tmp_path / "m.encoder.onnx"))
    dec = ort.InferenceSession(str(tmp_path / "m.decoder.onnx"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, *ckpt["shape"]), generator=gen, dtype=torch.uint8)  # a batch the export never saw
    z = torch.randn(7, model.latent_dim, generator=gen)
    y = torch.arange(7) % 10
    extra = {"y": y.numpy()} if model.num_classes else {}
    with torch.no_grad():
        mu, logvar = model.encode(x, y[:5] if model.num_classes else None)
        if hasattr(model, "temperature"):
            model.temperature = 0.0  # the exported decoder's lower groups sit at their prior means
        x_mean = model.likelihood.mean(model.decode(z, y if model.num_classes else None).float())
    got_mu, got_logvar = enc.run(None, {"x": x.numpy(), **({"y": y[:5].numpy()} if extra else {})})
    (got_x,) = dec.run(None, {"z": z.numpy(), **extra})
    assert got_x.shape == tuple(x_mean.shape) and got_mu.shape == tuple(mu.shape)
    for got, want in ((got_mu, mu), (got_logvar, logvar), (got_x, x_mean)):
        assert abs(got - want.numpy()).max() <= 1e-4
    meta = json.loads({p.key: p.value for p in onnx.load(tmp_path / "m.decoder.onnx").metadata_props}["vaelab"])
    assert meta["graph"] == "decoder" and meta["config"] == cfg.to_dict()
    assert meta["dataset"]["shape"] == list(ckpt["shape"]) and meta["dataset"]["classes"] == list(ckpt["classes"])


def test_an_onnx_export_that_fails_names_the_parts_and_writes_nothing(tiny_root, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxscript")
    train(tiny_config(epochs=1, train_size=64, posterior="iaf"), tmp_path / "r", data_dir=tiny_root)

    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::made_up_op\nmore detail")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "posterior iaf" in err and "aten::made_up_op" in err and "encoder" in err
    assert not list(tmp_path.glob("m*"))
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.onx")]) == 2
    assert "is a .safetensors file" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "onnxscript", None)  # as if not installed
    assert main(["export", str(tmp_path / "r"), str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'vaelab[onnx]'" in capsys.readouterr().err and not list(tmp_path.glob("m*"))

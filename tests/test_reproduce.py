"""The literature's MNIST protocol and `vaelab reproduce`: MNIST and its dynamic binarization, the papers' networks,
the IWAE objective, the rows, reproduction.json, resume, and the committed ledger."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import check_two_stochastic_layers, tiny_config, write_fashion
from vaelab import data as vdata
from vaelab.app.cli import main
from vaelab.core.errors import VaelabError
from vaelab.models import build
from vaelab.models.losses import iwae, log_normal, log_normal_components, objective
from vaelab.runs.config import from_dict
from vaelab.runs.run import Run
from vaelab.study import reproduce as rep
from vaelab.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
LEDGER = ROOT / "docs" / "reproductions"


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    """Tiny MNIST-layout IDX files under mnist/ (as ../shared/data lays MNIST out)."""
    root = tmp_path_factory.mktemp("mnistdata")
    write_fashion(root / "mnist", n_train=200, n_test=40, seed=3)
    return root


# ---------------------------------------------------------------- data


def test_binarize_draws_bernoulli_of_the_intensity():
    x = torch.tensor([0, 51, 128, 204, 255], dtype=torch.uint8).repeat(20000, 1)
    b = vdata.binarize(x, torch.Generator().manual_seed(0))
    assert b.dtype == torch.uint8 and set(b.unique().tolist()) <= {0, 255}
    share = (b == 255).double().mean(0)
    assert torch.allclose(share, x[0].double() / 255, atol=0.015)
    assert share[0] == 0 and share[-1] == 1  # black never, white always
    again = vdata.binarize(x, torch.Generator().manual_seed(0))
    assert torch.equal(b, again)


def test_binarized_mnist_scores_fixed_bits_and_trains_on_fresh_ones(mnist_root):
    grey = vdata.load("mnist", mnist_root)
    ds = vdata.load("binarized-mnist", mnist_root)
    assert set(np.unique(ds.x_test)) <= {0, 255} and np.array_equal(ds.x_train, grey.x_train)
    assert len(np.unique(grey.x_test)) > 2
    # one fixed draw: the same bits from the cache and from a fresh decode
    assert np.array_equal(ds.x_test, vdata.binarize_fixed(grey.x_test, vdata.BINARIZE_SEED))
    splits = vdata.make_splits(ds, 30, 0, 0)
    assert set(splits["val"].x.unique().tolist()) <= {0, 255}
    assert torch.equal(splits["val"].x, vdata.make_splits(ds, 30, 0, 0)["val"].x)
    assert len(splits["train"].x.unique()) > 2  # training images stay intensities: the trainer draws them


def test_the_trainer_draws_each_batch_anew_and_resumes_the_same_draws(mnist_root, tmp_path, monkeypatch):
    from vaelab.models import VAE

    seen = []
    forward = VAE.forward
    monkeypatch.setattr(VAE, "forward", lambda self, x, *a, **k: (seen.append(x.clone()), forward(self, x, *a, **k))[1])
    cfg = tiny_config(dataset="binarized-mnist", net="mlp", likelihood="bernoulli", epochs=2, val_size=20)
    train(cfg, tmp_path / "a", data_dir=mnist_root, progress=False)
    batches = [x for x in seen if x.shape[0] == cfg.batch_size]
    assert batches and all(set(x.unique().tolist()) <= {0, 255} for x in batches)
    steps = math.ceil(180 / cfg.batch_size)
    assert not torch.equal(batches[0], batches[steps])  # epoch 2 draws other bits (and another order)

    class Killed(Exception):
        pass

    def kill(epoch, row):
        raise Killed

    with pytest.raises(Killed):  # stopped after its first epoch's checkpoint, as a kill would
        train(cfg, tmp_path / "b", data_dir=mnist_root, progress=False, on_epoch_end=kill)
    train(cfg, tmp_path / "b", data_dir=mnist_root, progress=False, resume=True)
    wa, wb = Run(tmp_path / "a").load()[1].state_dict(), Run(tmp_path / "b").load()[1].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # a killed-and-resumed run draws the same bits


def test_mnist_content_hashes_verify_without_a_sha256sums(tmp_path, monkeypatch):
    import gzip
    import hashlib

    write_fashion(tmp_path / "mnist", n_train=20, n_test=10)
    f = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress(f.read_bytes())
    monkeypatch.setitem(vdata.MNIST_CONTENT, f.name, (hashlib.sha256(content).hexdigest(), len(content)))
    assert vdata.check_file(f)[0] == "verified"
    f.write_bytes(gzip.compress(content[:-1] + b"\x07"))  # one label changed: neither MNIST's nor Fashion's
    assert vdata.check_file(f)[0] in ("corrupt", "unverified")


@pytest.mark.realdata
def test_real_mnist_is_verified_with_its_known_facts(real_data_dir):
    if real_data_dir is None or not (real_data_dir / "mnist").is_dir():
        pytest.skip("needs the real MNIST in $VAELAB_DATA")
    rows = {r["dataset"]: r for r in vdata.status(real_data_dir)}
    assert rows["mnist"]["status"] == "verified" and rows["binarized-mnist"]["status"] == "verified"
    ds = vdata.load("mnist", real_data_dir)
    assert np.bincount(ds.y_train).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.x_train.mean() / 255 == pytest.approx(0.1307, abs=1e-4)


# ---------------------------------------------------------------- networks, objective, mixture densities


def test_the_papers_networks_have_their_layer_sizes():
    gated = build(from_dict({"net": "mlp_gated", "latent_dim": 40, "likelihood": "bernoulli"}), (1, 28, 28))
    n_enc = sum(p.numel() for p in gated.encoder.parameters())
    assert n_enc == 2 * (784 * 300 + 300) + 2 * (300 * 300 + 300)  # two gated layers: a linear map and its gate
    tanh = build(from_dict({"net": "mlp_tanh", "latent_dim": 50, "likelihood": "bernoulli"}), (1, 28, 28))
    assert [m.out_features for m in tanh.encoder.net if isinstance(m, torch.nn.Linear)] == [200, 200]
    assert all(isinstance(m, (torch.nn.Linear, torch.nn.Tanh)) for m in tanh.decoder.net)


def test_iwae_terms_are_the_evaluators_log_weights_and_the_bound_is_tighter():
    cfg = from_dict({"net": "mlp", "latent_dim": 3, "likelihood": "bernoulli", "objective": "iwae", "train_samples": 7})
    torch.manual_seed(0)
    model = build(cfg, (1, 8, 8))
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    t = model(x, k=7)
    torch.manual_seed(1)
    log_w = model.log_weights(x, None, 7)
    assert torch.allclose(t["log_px"] + t["log_ratio"], log_w, atol=1e-5)
    loss = iwae(t, 1.0, cfg)
    mc_elbo = (t["recon"] + t["kl"]).mean()  # the mean of the same K log-weights: never tighter than their log-mean-exp
    assert loss.item() <= mc_elbo.item() + 1e-6
    one = {k: v[:, :1] for k, v in t.items() if k in ("log_px", "log_ratio")}
    assert iwae(one, 1.0, cfg).item() == pytest.approx(-(log_w[:, 0]).mean().item(), abs=1e-4)
    assert objective(t, 1.0, cfg).item() == pytest.approx(loss.item())


def test_iwae_trains_and_its_sample_count_is_checked(tiny_root, tmp_path):
    cfg = tiny_config(objective="iwae", train_samples=3, net="mlp", likelihood="bernoulli")
    row = train(cfg, tmp_path / "r", data_dir=tiny_root, progress=False)
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["val_neg_elbo"])
    with pytest.raises(VaelabError, match="train_samples 3 needs an objective"):
        from_dict({"train_samples": 3})
    with pytest.raises(VaelabError, match="hierarchical model supports"):
        from_dict({"model": "hierarchical", "objective": "iwae"})


def test_mixture_densities_by_matrix_products_match_the_direct_sum():
    g = torch.Generator().manual_seed(0)
    z, mu = torch.randn(6, 5, 10, generator=g), torch.randn(30, 10, generator=g)
    logvar = torch.randn(30, 10, generator=g) - 1
    direct = log_normal(z.unsqueeze(-2), mu, logvar)
    assert torch.allclose(log_normal_components(z, mu, logvar), direct, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------- rows, reproduction.json, the ledger


def test_the_registry_lists_at_least_four_published_rows(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(rep.ROWS) >= 4
    for r in rep.ROWS.values():
        assert r.config.dataset == "binarized-mnist" and r.k == 5000 and r.tolerance <= 1.0
        assert r.paper_epochs >= r.config.epochs or r.config.epochs >= r.paper_epochs
        assert any(r.id in line and f"{r.published:.2f}" in line for line in lines)


def _made_up(values):
    return [
        {"seed": i, "nll": v, "neg_elbo": v + 4, "epochs": 1.0, "steps": 10, "seconds": 1.0}
        for i, v in enumerate(values)
    ]


def test_within_needs_the_full_protocol_and_the_gap_inside_the_tolerance():
    r = rep.ROWS["tomczak2018-vae"]
    close = rep.summarize(r, _made_up([88.9, 89.1, 89.2]), "", 5000)
    assert close["within"] and close["gap"] == pytest.approx(statistics.fmean([88.9, 89.1, 89.2]) - 88.56)
    assert close["sd"] == pytest.approx(statistics.stdev([88.9, 89.1, 89.2]))
    assert not rep.summarize(r, _made_up([90.0, 89.8, 89.9]), "", 5000)["within"]  # 1.34 nats off
    assert not rep.summarize(r, _made_up([88.9, 89.1, 89.2]), "2e6images", 5000)["within"]  # reduced budget
    assert not rep.summarize(r, _made_up([88.9, 89.1, 89.2]), "", 1000)["within"]  # fewer samples than the paper


def test_a_reduced_reproduction_runs_end_to_end_and_resumes(mnist_root, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["reproduce", "burda2016-vae", "--seeds", "2", "--budget", "12steps", "--k", "5", "--out", str(out)]
    assert main([*args, "--data-dir", str(mnist_root)]) == 0
    d = json.loads((out / "reproduction.json").read_text())
    for key in rep.LEDGER_KEYS + ("date", "machine", "vaelab_version", "gap", "per_seed"):
        assert key in d
    assert len(d["measured"]) == 2 and d["k"] == 5 and d["budget"] == "12steps"
    assert d["reduced"] and not d["within"] and d["mean"] == pytest.approx(statistics.fmean(d["measured"]))
    assert all(s["steps"] == 12 for s in d["per_seed"]) and d["measured"][0] != d["measured"][1]
    ckpt = out / "seed-0" / "checkpoint.safetensors"
    before = ckpt.stat().st_mtime_ns
    assert main([*args, "--data-dir", str(mnist_root)]) == 0  # finished seeds are kept, not retrained
    assert ckpt.stat().st_mtime_ns == before
    assert json.loads((out / "reproduction.json").read_text())["measured"] == d["measured"]
    capsys.readouterr()
    other = ["reproduce", "burda2016-vae", "--seeds", "2", "--budget", "20steps", "--out", str(out)]
    assert main([*other, "--data-dir", str(mnist_root)]) == 2  # another budget in the same folder: refused
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, msg",
    [
        (["burda2016-vae", "--budget", "90s"], "a count of steps or images"),
        (["burda2016-vae", "--seeds", "0"], "--seeds must be in 1..100"),
        (["burda2016-vae", "--k", "0"], "--k must be in"),
        (["burda2016-vae", "--jobs", "0"], "--jobs must be in 1..256"),
        (["nope"], "unknown reproduction 'nope'"),
    ],
)
def test_bad_reproduce_input_is_one_line_and_leaves_nothing(args, msg, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["reproduce", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists()


def test_the_committed_ledger_is_well_formed_and_is_the_generated_table():
    files = sorted(LEDGER.glob("*.json"))
    if not files:
        pytest.skip("no committed reproductions yet")
    for f in files:
        d = json.loads(f.read_text())
        assert d["id"] in rep.ROWS and f.stem == d["id"]
        assert len(d["measured"]) >= 3 and d["mean"] == pytest.approx(statistics.fmean(d["measured"]))
        assert d["within"] == ((not d["reduced"]) and abs(d["mean"] - d["published"]) <= d["tolerance"])
    table = rep.ledger_markdown(LEDGER)
    assert table in (ROOT / "docs" / "reproductions.md").read_text()


def test_the_ledger_is_generated_into_its_page_between_markers(tmp_path, capsys):
    folder = tmp_path / "rows"
    folder.mkdir()
    for rid, values in (("tomczak2018-vae", [88.9, 89.1, 89.2]), ("burda2016-vae", [90.0, 90.5, 89.9])):
        d = rep.summarize(rep.ROWS[rid], _made_up(values), "" if rid.startswith("t") else "2e6images", 5000)
        (folder / f"{rid}.json").write_text(json.dumps(d))
    page = tmp_path / "reproductions.md"
    page.write_text(f"# Prose before\n\n{rep.BEGIN}\nold table\n{rep.END}\n\nProse after.\n")
    assert main(["reproduce", "--ledger", str(folder), "--write", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Prose before") and text.endswith("Prose after.\n") and "old table" not in text
    table = rep.ledger_markdown(folder)
    assert table in text and table.startswith("1 of 2 rows within their tolerance under the papers' protocol; 1 ran")
    assert "(0 of them land within the tolerance all the same)" in table
    burda, tomczak = (line for line in table.splitlines() if line.startswith("| `"))
    assert "`burda2016-vae`" in burda and "| not counted (reduced) |" in burda and "2e6images" in burda
    assert "`tomczak2018-vae`" in tomczak and "| yes |" in tomczak and "+0.51" in tomczak
    (folder / "burda2016-vae.json").write_text(json.dumps({"id": "burda2016-vae"}))
    assert main(["reproduce", "--ledger", str(folder)]) == 2
    assert "not a reproduction.json (missing" in capsys.readouterr().err


def test_the_two_layer_model_offers_the_flat_vaes_terms_and_a_valid_bound():
    cfg = from_dict({"model": "two_layer", "latent_dim": 3, "likelihood": "bernoulli"})
    torch.manual_seed(0)
    check_two_stochastic_layers(build(cfg, (1, 6, 6)))
    with pytest.raises(VaelabError, match="two_layer model"):
        from_dict({"model": "two_layer", "prior": "vamp"})


def test_the_two_layer_model_trains_and_is_evaluated_from_the_cli(mnist_root, tmp_path, capsys):
    out = tmp_path / "r"
    argv = ["train", "--dataset", "binarized-mnist", "--model", "two_layer", "--latent-dim", "4"]
    argv += ["--likelihood", "bernoulli", "--epochs", "2", "--val-size", "20", "--iwae-samples", "5"]
    assert main([*argv, "--out", str(out), "--data-dir", str(mnist_root)]) == 0
    ev = json.loads((out / "eval.json").read_text())
    assert ev["iwae_nll"] <= ev["neg_elbo"] + 1.0 and ev["latent_dim"] == 4 and ev["kl_estimator"] == "monte carlo"


@pytest.mark.slow
def test_seeds_in_parallel_give_the_same_row_as_one_after_another(mnist_root, tmp_path):
    args = [
        "reproduce",
        "burda2016-vae",
        "--seeds",
        "2",
        "--budget",
        "8steps",
        "--k",
        "3",
        "--data-dir",
        str(mnist_root),
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "reproduction.json").read_text()) for d in ("one", "two"))
    assert one["measured"] == two["measured"] and len(set(one["measured"])) == 2

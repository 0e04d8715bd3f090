"""The trainer: it learns, is reproducible, resumes to the same result, guards against NaN, writes atomically."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import count, quick_classifier, tiny_config
from vaelab import VaelabError
from vaelab import data as vdata
from vaelab.models import VAE, build
from vaelab.runs.checkpoint import load_checkpoint, load_model
from vaelab.training.epochs import TrainingDiverged
from vaelab.training.loop import train


@pytest.fixture
def ds(tiny_root):
    return vdata.load("fashion-mnist", tiny_root)


def test_one_step_changes_the_weights(ds, tmp_path):
    cfg = tiny_config(batch_size=200)  # 200 training images: exactly one step
    torch.manual_seed(cfg.seed)
    before = VAE.from_config(cfg, ds.shape).state_dict()
    train(cfg, tmp_path / "r", dataset=ds)
    _, model, ckpt = load_model(tmp_path / "r")
    assert ckpt["step"] == 1
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "encoder.conv.0.weight" in changed and "decoder.deconv.2.bias" in changed


def test_run_directory_contents(ds, tmp_path):
    cfg = tiny_config(epochs=2)
    train(cfg, tmp_path / "r", dataset=ds)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert files == {"config.json", "metrics.jsonl", "checkpoint.safetensors", ".lock"}  # no temp files left behind
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == cfg.to_dict()
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in (
        "train_loss",
        "train_recon",
        "train_kl",
        "val_neg_elbo",
        "val_recon",
        "val_kl",
        "seconds",
        "images_per_s",
    ):
        assert key in rows[0]


def test_training_improves_the_validation_elbo(ds, tmp_path):
    last = train(tiny_config(epochs=6, lr=3e-3), tmp_path / "r", dataset=ds)
    rows = load_checkpoint(tmp_path / "r")["history"]
    assert last["val_neg_elbo"] < rows[0]["val_neg_elbo"]


def test_same_seed_same_numbers_other_seed_differs(ds, tmp_path):
    a = train(tiny_config(epochs=2), tmp_path / "a", dataset=ds)
    b = train(tiny_config(epochs=2), tmp_path / "b", dataset=ds)
    c = train(tiny_config(epochs=2, seed=1), tmp_path / "c", dataset=ds)
    assert a["train_loss"] == b["train_loss"] and a["val_neg_elbo"] == b["val_neg_elbo"]
    assert a["train_loss"] != c["train_loss"]


class Interrupt(Exception):
    pass


def _stop_after(n):
    def hook(epoch, row):
        if epoch == n:
            raise Interrupt

    return hook


@pytest.mark.parametrize("extra", [{}, {"cosine": True, "warmup_epochs": 2.0}, {"objective": "factor_vae"}])
def test_resume_reaches_the_same_result(ds, tmp_path, extra):
    cfg = tiny_config(epochs=3, **extra)
    full = train(cfg, tmp_path / "full", dataset=ds)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=ds, on_epoch_end=_stop_after(1))
    assert load_checkpoint(tmp_path / "cut")["epoch"] == 1
    resumed = train(cfg, tmp_path / "cut", dataset=ds, resume=True)
    assert resumed == {**full, "seconds": resumed["seconds"], "images_per_s": resumed["images_per_s"]}
    a, b = load_checkpoint(tmp_path / "full")["model"], load_checkpoint(tmp_path / "cut")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 3
    count("kill_trials")
    count("kill_trials_resumed_bit_identical")


def test_resume_after_a_kill_between_writes_cleans_up(ds, tmp_path):
    """SIGKILL after the checkpoint's rename but mid-way through writing metrics.jsonl: a stale temp file
    and metrics one epoch behind. Resuming removes the temp and restores metrics from the checkpoint."""
    cfg = tiny_config(epochs=2)
    run = tmp_path / "r"
    train(cfg, run, dataset=ds)
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(rows[0] + "\n")
    (run / ".metrics.jsonl.x1y2z3.tmp").write_text(rows[0][:10])
    assert train(cfg, run, dataset=ds, resume=True)["epoch"] == 2
    assert (run / "metrics.jsonl").read_text().splitlines() == rows
    assert not list(run.glob("*.tmp"))
    count("kill_trials")
    count("kill_trials_resumed_bit_identical")


def test_existing_run_needs_resume_and_same_config(ds, tmp_path):
    cfg = tiny_config()
    train(cfg, tmp_path / "r", dataset=ds)
    with pytest.raises(VaelabError, match="--resume"):
        train(cfg, tmp_path / "r", dataset=ds)
    with pytest.raises(VaelabError, match="different config"):
        train(cfg.replace(beta=2.0), tmp_path / "r", dataset=ds, resume=True)
    assert train(cfg, tmp_path / "r", dataset=ds, resume=True)["epoch"] == 1  # finished: nothing retrained


def poison_steps(monkeypatch, bad) -> None:
    """Make training step n (counted from 1 across epochs) non-finite whenever bad(n)."""
    real_forward = VAE.forward
    calls = {"n": 0}

    def forward(self, x, y=None):
        out = real_forward(self, x, y)
        if self.training:
            calls["n"] += 1
            if bad(calls["n"]):
                out["recon"] = out["recon"] * float("nan")
        return out

    monkeypatch.setattr(VAE, "forward", forward)


def test_nan_guard_skips_and_then_stops_keeping_the_checkpoint(ds, tmp_path, monkeypatch):
    cfg = tiny_config(epochs=3, max_bad_steps=3)
    poison_steps(monkeypatch, lambda n: n > 7)  # epoch 1 has 7 steps (200 images, batch 32); every later step fails
    with pytest.raises(TrainingDiverged, match="in epoch 2: 3 non-finite steps in a row") as e:
        train(cfg, tmp_path / "r", dataset=ds)
    assert "last good checkpoint is kept" in str(e.value)
    ckpt = load_checkpoint(tmp_path / "r")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_isolated_nan_steps_are_skipped_and_counted(ds, tmp_path, monkeypatch):
    poison_steps(monkeypatch, lambda n: n % 3 == 0)
    last = train(tiny_config(epochs=1, max_skip_share=0.5), tmp_path / "r", dataset=ds)
    assert last["skipped_steps"] == 2  # 7 steps of 32 over 200 images: steps 3 and 6 skipped
    assert last["step"] == 5


def test_conditional_run_trains(ds, tmp_path):
    last = train(tiny_config(conditional=True), tmp_path / "r", dataset=ds)
    _, model, _ = load_model(tmp_path / "r")
    assert model.num_classes == 10 and last["epoch"] == 1


def test_gradient_norm_and_clipping_match_torch():
    from vaelab.training.epochs import _clip, _grad_norm

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    norm = _grad_norm(params)
    assert torch.allclose(norm, expected)
    before = [p.grad.clone() for p in params]
    _clip(params, float(norm) + 1.0, norm)  # below the limit: untouched, bit for bit
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    _clip(params, 1.0, norm)  # above: rescaled to the limit, direction kept
    assert torch.allclose(_grad_norm(params), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(params[0].grad * float(norm), before[0], rtol=1e-4)


def test_non_finite_steps_are_counted_across_epochs(ds, tmp_path, monkeypatch):
    """Fewer steps per epoch than max_bad_steps (the README's --train-size example): the run in a row spans
    the epoch boundary instead of starting again at 0."""
    cfg = tiny_config(epochs=6, train_size=96, batch_size=32, max_bad_steps=3, max_skip_share=1.0)  # 3 steps/epoch
    poison_steps(monkeypatch, lambda n: n >= 6)  # the last step of epoch 2, then every step of epoch 3
    with pytest.raises(TrainingDiverged, match="in epoch 3: 3 non-finite steps in a row"):
        train(cfg, tmp_path / "r", dataset=ds)
    assert load_checkpoint(tmp_path / "r")["epoch"] == 2


def test_an_epoch_without_one_good_step_is_never_saved(ds, tmp_path, monkeypatch):
    cfg = tiny_config(epochs=4, train_size=64, batch_size=32, max_bad_steps=50, max_skip_share=1.0)
    poison_steps(monkeypatch, lambda n: n > 2)
    with pytest.raises(TrainingDiverged, match="in epoch 2: 2 of 2 steps were non-finite"):
        train(cfg, tmp_path / "r", dataset=ds)
    assert load_checkpoint(tmp_path / "r")["epoch"] == 1


@pytest.mark.parametrize("share,steps_bad,diverges", [(0.1, 1, True), (0.5, 1, False)])
def test_an_epoch_that_skips_too_many_steps_is_not_saved(ds, tmp_path, monkeypatch, share, steps_bad, diverges):
    poison_steps(monkeypatch, lambda n: n <= steps_bad)
    cfg = tiny_config(epochs=1, max_skip_share=share)  # 7 steps: 1 skipped is 14 %
    if diverges:
        with pytest.raises(TrainingDiverged, match="1 of 7 steps were non-finite"):
            train(cfg, tmp_path / "r", dataset=ds)
        assert not (tmp_path / "r" / "checkpoint.safetensors").exists()
    else:
        assert train(cfg, tmp_path / "r", dataset=ds)["skipped_steps"] == 1


def test_weights_that_blow_up_stop_the_run(ds, tmp_path):
    """An enormous learning rate gives finite gradients once and non-finite weights after: caught at the epoch's
    end, nothing saved."""
    with pytest.raises(TrainingDiverged, match="diverged in epoch 1"):
        train(tiny_config(epochs=2, lr=1e30, grad_clip=0.0), tmp_path / "r", dataset=ds)
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()


def test_checkpoint_round_trip_restores_every_tensor(ds, tmp_path):
    train(tiny_config(epochs=1), tmp_path / "r", dataset=ds)
    ckpt = load_checkpoint(tmp_path / "r")
    _, model, _ = load_model(tmp_path / "r")
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    state = ckpt["optimizer"]["state"]
    assert set(state) == set(range(len(list(model.parameters()))))  # int keys survive the JSON skeleton
    assert ckpt["rng"]["torch"].dtype == torch.uint8 and ckpt["format"] == 2
    assert ckpt["history"][0]["epoch"] == 1


def test_a_failed_start_leaves_nothing_behind(ds, tmp_path):
    with pytest.raises(VaelabError, match="leaves no training images"):
        train(tiny_config(val_size=10_000), tmp_path / "r", dataset=ds)
    assert not (tmp_path / "r").exists()
    train(tiny_config(), tmp_path / "r", dataset=ds)  # the corrected run is not blocked


@pytest.mark.parametrize(
    "fields,beta_rows",
    [
        ({"objective": "free_bits", "free_bits": 0.5}, [1.0, 1.0]),
        ({"objective": "capacity", "capacity_max": 5.0, "capacity_gamma": 10.0}, [1.0, 1.0]),
        ({"objective": "beta_tcvae", "beta": 6.0, "tc_alpha": 1.0, "tc_gamma": 1.0}, [6.0, 6.0]),
        ({"kl_schedule": "cyclical", "kl_cycles": 2, "kl_cycle_ratio": 0.5, "beta": 2.0}, [0.0, 0.0]),
        ({"kl_schedule": "cyclical", "kl_cycles": 1, "kl_cycle_ratio": 1.0, "beta": 2.0}, [1.0, 0.0]),
    ],
)
def test_every_objective_and_schedule_trains(ds, tmp_path, fields, beta_rows):
    """7 steps per epoch, 14 in all: one cycle rising over all of it is at 1.0 after epoch 1 and starts again at
    step 14; two cycles of 7 are back at 0 at each epoch's end."""
    hist = [train(tiny_config(epochs=2, **fields), tmp_path / "r", dataset=ds)]
    rows = load_checkpoint(tmp_path / "r")["history"]
    assert [r["beta"] for r in rows] == pytest.approx(beta_rows)
    assert all(math.isfinite(r["val_neg_elbo"]) for r in rows) and hist[0]["epoch"] == 2


def test_perceptual_weight_adds_the_feature_term_and_trains(ds, tmp_path, monkeypatch):
    """DFC-VAE: the feature distance in the reference classifier's features joins the loss (a 1-epoch classifier
    here); the validation ELBO stays the likelihood's own."""
    from vaelab.models.losses import perceptual_term
    from vaelab.training import classifier

    quick_classifier(monkeypatch, 1)
    clf, _ = classifier.reference_classifier("fashion-mnist", ds=ds)
    x = torch.from_numpy(ds.x_test[:4])
    same = perceptual_term(clf.features, x, x.float() / 255.0)
    assert torch.allclose(same, torch.zeros(4), atol=1e-6)  # a perfect reconstruction costs nothing
    assert torch.all(perceptual_term(clf.features, x, torch.rand(4, 1, 28, 28)) > 0)
    plain = train(tiny_config(epochs=1), tmp_path / "a", dataset=ds)
    with_p = train(tiny_config(epochs=1, perceptual_weight=0.1), tmp_path / "b", dataset=ds)
    assert with_p["train_loss"] > plain["train_loss"]  # the same first steps plus a positive term
    assert math.isfinite(with_p["val_neg_elbo"])


def test_ema_weights_differ_from_the_raw_ones_and_are_what_evaluation_reads(ds, tmp_path):
    """With --ema the checkpoint's "model" is the moving average (validation, evaluation and sampling read it) and
    "train_model" the raw weights training resumes from; the EMA equals the update rule applied by hand."""
    from vaelab.runs.run import Run

    cfg = tiny_config(epochs=1, ema=0.5, train_size=64)
    last = train(cfg, tmp_path / "e", dataset=ds)
    ck = load_checkpoint(tmp_path / "e")
    ema, raw = ck["model"], ck["train_model"]
    assert set(ema) == set(raw) and any(not torch.equal(ema[k], raw[k]) for k in ema)
    _, model, _ = Run(tmp_path / "e").load()
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)
    from vaelab.models import build
    from vaelab.training.epochs import average_terms

    splits = vdata.make_splits(ds, cfg.val_size, cfg.train_size, cfg.test_size, "cpu")
    torch.manual_seed(0)
    on_ema = average_terms(model, splits["val"])["neg_elbo"]
    raw_model = build(cfg, ds.shape, len(ds.classes))
    raw_model.load_state_dict(raw)
    torch.manual_seed(0)
    assert average_terms(raw_model, splits["val"])["neg_elbo"] != on_ema
    assert "val_neg_elbo" in last
    # two steps by hand: ema = 0.5 * ema + 0.5 * w after each, starting from the initial weights
    cfg2 = tiny_config(epochs=1, ema=0.5, train_size=64, batch_size=32, val_size=40)
    torch.manual_seed(cfg2.seed)
    w0 = build(cfg2, ds.shape, len(ds.classes)).state_dict()
    train(cfg2.replace(ema=0.0), tmp_path / "raw", dataset=ds)  # the same steps without an EMA
    w2 = load_checkpoint(tmp_path / "raw")["model"]
    train(cfg2, tmp_path / "ema2", dataset=ds)
    e2 = load_checkpoint(tmp_path / "ema2")["model"]
    assert torch.equal(
        load_checkpoint(tmp_path / "ema2")["train_model"]["posterior.to_mu.weight"], w2["posterior.to_mu.weight"]
    )  # the EMA never feeds back into training
    k = "posterior.to_mu.bias"
    assert not torch.allclose(e2[k], w2[k]) and not torch.allclose(e2[k], w0[k])


@pytest.mark.parametrize("extra", [dict(ema=0.9), dict(ema=0.9, skip_grad_norm=1e9)])
def test_resume_with_ema_is_exact(ds, tmp_path, extra):
    cfg = tiny_config(epochs=3, **extra)
    full = train(cfg, tmp_path / "full", dataset=ds)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=ds, on_epoch_end=_stop_after(1))
    resumed = train(cfg, tmp_path / "cut", dataset=ds, resume=True)
    assert resumed == {**full, "seconds": resumed["seconds"], "images_per_s": resumed["images_per_s"]}
    for key in ("model", "train_model"):
        a, b = load_checkpoint(tmp_path / "full")[key], load_checkpoint(tmp_path / "cut")[key]
        assert all(torch.equal(a[k], b[k]) for k in a)
    count("kill_trials")
    count("kill_trials_resumed_bit_identical")


def test_a_time_budget_stops_cleanly_and_counts_time_already_trained(ds, tmp_path, monkeypatch):
    """A fake clock: each training step takes 1 s. A 5 s budget stops mid-epoch after 5 steps with a checkpoint
    (the partial epoch marked), the cosine and cyclical KL schedules spread over the budget; a resume with budget left trains on
    only for what is left, and one without any left trains nothing."""
    import vaelab.training.loop as vtrain

    clock = {"t": 0.0}

    def fake_perf_counter():
        return clock["t"]

    real_step = torch.optim.Adam.step

    def step(self, *a, **k):
        clock["t"] += 1.0
        return real_step(self, *a, **k)

    monkeypatch.setattr(vtrain.time, "perf_counter", fake_perf_counter)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    cfg = tiny_config(
        epochs=100,
        batch_size=16,
        train_size=160,
        time_budget=5.0,
        cosine=True,  # 10 steps an epoch
        kl_schedule="cyclical",
        kl_cycles=1,
        kl_cycle_ratio=1.0,
    )
    last = train(cfg, tmp_path / "t", dataset=ds)
    ck = load_checkpoint(tmp_path / "t")
    assert ck["epoch"] == 1 and ck["step"] == 5 and last.get("partial") is True and last["seconds"] == 5.0
    assert last["lr"] == pytest.approx(cfg.lr * 0.5 * (1 + math.cos(math.pi * 4 / 5)))  # the 5th step: 4 s in
    assert train(cfg, tmp_path / "t", dataset=ds, resume=True)["epoch"] == 1  # budget spent: nothing more
    longer = cfg.replace(time_budget=12.0)
    with pytest.raises(Interrupt):  # killed after the first full epoch: 10 of its 12 seconds trained
        train(longer, tmp_path / "t2", dataset=ds, on_epoch_end=_stop_after(1))
    train(longer, tmp_path / "t2", dataset=ds, resume=True)
    ck = load_checkpoint(tmp_path / "t2")
    assert ck["step"] == 12 and [h["seconds"] for h in ck["history"]] == [10.0, 2.0]
    assert ck["history"][0]["beta"] == pytest.approx(10 / 12)  # the KL schedule, too, runs over the budget's seconds
    count("kill_trials")


@pytest.mark.parametrize("ema", [0.0, 0.5])
def test_early_stopping_keeps_the_best_epoch_and_resumes_exactly(ds, tmp_path, monkeypatch, ema):
    """Scripted validation ELBOs 10, 9, 9.5, 9.6, 9.7 with patience 2: the run stops after epoch 4, two epochs
    after its best, and the checkpoint's model is epoch 2's weights; a resume trains nothing more. A margin of
    1 % makes 9.95 no improvement over 10."""
    import vaelab.training.loop as vtrain

    script = iter([10.0, 9.0, 9.5, 9.6, 9.7, 9.8])
    monkeypatch.setattr(vtrain, "average_terms", lambda m, s: {"recon": 1.0, "kl": 1.0, "neg_elbo": next(script)})
    kept = {}

    def keep(epoch, row):
        kept[epoch] = load_checkpoint(tmp_path / "r")["model"]

    cfg = tiny_config(epochs=10, patience=2, ema=ema)
    last = train(cfg, tmp_path / "r", dataset=ds, on_epoch_end=keep)
    ck = load_checkpoint(tmp_path / "r")
    assert last["epoch"] == 4 and last["stopped_early"] and last["best_epoch"] == 2 and ck["epoch"] == 4
    assert all(torch.equal(ck["model"][k], kept[2][k]) for k in kept[2])
    assert any(not torch.equal(ck["train_model"][k], kept[2][k]) for k in kept[2])  # training went on past it
    assert train(cfg, tmp_path / "r", dataset=ds, resume=True)["epoch"] == 4
    script2 = iter([10.0, 9.95, 9.97, 9.0])
    monkeypatch.setattr(vtrain, "average_terms", lambda m, s: {"recon": 1.0, "kl": 1.0, "neg_elbo": next(script2)})
    last = train(cfg.replace(min_improvement=0.01), tmp_path / "m", dataset=ds)
    assert last["epoch"] == 3 and last["best_epoch"] == 1


def test_early_stopping_resumed_mid_run_equals_an_uninterrupted_run(ds, tmp_path):
    cfg = tiny_config(epochs=3, patience=5, ema=0.5)
    full = train(cfg, tmp_path / "full", dataset=ds)
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "cut", dataset=ds, on_epoch_end=_stop_after(1))
    resumed = train(cfg, tmp_path / "cut", dataset=ds, resume=True)
    assert resumed == {**full, "seconds": resumed["seconds"], "images_per_s": resumed["images_per_s"]}
    for key in ("model", "train_model", "ema_model"):
        a, b = load_checkpoint(tmp_path / "full")[key], load_checkpoint(tmp_path / "cut")[key]
        assert all(torch.equal(a[k], b[k]) for k in a)
    count("kill_trials")
    count("kill_trials_resumed_bit_identical")


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(ds, tmp_path):
    """bf16 autocast on the CPU: finite, and the first epoch's training loss within 2 % of fp32's (bf16 keeps 8
    bits of mantissa; the loss terms themselves are summed in fp32)."""
    a = train(tiny_config(epochs=1, train_size=128), tmp_path / "fp32", dataset=ds)
    b = train(tiny_config(epochs=1, train_size=128, bf16=True), tmp_path / "bf16", dataset=ds)
    assert math.isfinite(b["train_loss"]) and b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    assert b["train_loss"] != a["train_loss"]  # and bf16 really ran: the same seed gives other roundings
    assert b["val_neg_elbo"] == pytest.approx(a["val_neg_elbo"], rel=0.02)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_device_that_emulates_it_warns_once_and_trains_as_asked(ds, tmp_path, monkeypatch, native):
    """Where bf16 is emulated (an AVX2-only CPU: steps 10-17x slower), asking for it warns, naming the way out;
    where it is native, nothing is said. Either way the run trains what its config says."""
    import warnings

    from vaelab.training import budget

    monkeypatch.setattr(budget, "bf16_native", lambda device: native)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train(tiny_config(batch_size=200, bf16=True), tmp_path / "r", dataset=ds)
    emulated = [w for w in seen if issubclass(w.category, budget.EmulatedBf16Warning)]
    assert len(emulated) == (0 if native else 1)
    if not native:
        assert "--no-bf16" in str(emulated[0].message) and "cpu" in str(emulated[0].message)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["bf16"] is True


def test_tensorboard_tracker_writes_what_metrics_jsonl_says(ds, tmp_path):
    """Read the event files back: per-step training curves, per-epoch validation equal to metrics.jsonl, the KL per
    dimension as a histogram, reconstructions and samples as images, and the config."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(epochs=2, tracker="tensorboard", batch_size=16, train_size=200)
    train(cfg, tmp_path / "r", dataset=ds)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    hist = load_checkpoint(tmp_path / "r")["history"]
    val = [e.value for e in acc.Scalars("val/neg_elbo")]
    assert val == pytest.approx([h["val_neg_elbo"] for h in hist], rel=1e-6)
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(10, hist[-1]["step"] + 1, 10))  # every 10th of the 26 steps
    assert "kl_per_dim" in tags["histograms"] and {"reconstructions", "samples"} <= set(tags["images"])
    assert "config/text_summary" in tags["tensors"]


def test_an_unknown_tracker_is_refused():
    with pytest.raises(VaelabError, match="unknown tracker 'wandb'"):
        tiny_config(tracker="wandb")


def test_a_run_whose_every_step_is_skipped_for_its_gradient_norm_is_refused_not_trained_forever(ds, tmp_path):
    """skip_grad_norm below every step's gradient norm leaves no update: the epoch ends as a divergence naming
    skip_grad_norm, and the time budget still ends training (the cifar10-hvae-gpu preset once trained 48 epochs
    of skipped steps on an H200)."""
    cfg = tiny_config(epochs=3, skip_grad_norm=1e-9)
    with pytest.raises(TrainingDiverged, match="skip_grad_norm"):
        train(cfg, tmp_path / "r", dataset=ds)
    assert not (tmp_path / "r" / "checkpoint.safetensors").exists()  # no epoch without an update is saved


def test_count_budgets_stop_at_their_step_and_span_the_schedule(ds, tmp_path):
    """3 steps, 70 images (= 3 batches of 32) and a FLOP budget of 3 steps' FLOPs all train exactly 3 steps, the
    cosine schedule spread over them; epochs is only the upper bound."""
    from vaelab.training.budget import step_flops

    cfg = tiny_config(epochs=50, batch_size=32, cosine=True)
    flops = step_flops(
        cfg, build(cfg, ds.shape, len(ds.classes)), vdata.make_splits(ds, cfg.val_size, cfg.train_size, 0)["train"]
    )
    assert flops > 0
    for budget in ("3steps", "70images", f"{3 * flops + 1}flops"):
        last = train(cfg.replace(budget=budget), tmp_path / budget, dataset=ds)
        assert last["step"] == 3 and last["epoch"] == 1, budget
        assert last["lr"] == pytest.approx(cfg.lr * 0.5 * (1 + math.cos(math.pi * 2 / 3)))  # the last step's


def test_a_flop_budget_gives_the_same_weights_beside_a_busy_process(ds, tmp_path):
    """Counts, not seconds: the same spec and seed give identical weights whether or not another process keeps the
    CPU busy during the run (a time budget would train fewer steps there)."""
    import subprocess
    import sys

    from vaelab.training.budget import step_flops

    cfg = tiny_config(epochs=50)
    flops = step_flops(cfg, build(cfg, ds.shape, len(ds.classes)), vdata.make_splits(ds, 40, 0, 0)["train"])
    cfg = cfg.replace(budget=f"{5.5 * flops:.6g}flops")  # five steps' worth
    quiet = train(cfg, tmp_path / "quiet", dataset=ds)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = train(cfg, tmp_path / "busy", dataset=ds)
    finally:
        busy.kill()
        busy.wait()
    assert quiet["step"] == loaded["step"] == 5
    a, b = load_checkpoint(tmp_path / "quiet")["model"], load_checkpoint(tmp_path / "busy")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_budget_resumes_to_the_same_step(ds, tmp_path):
    cfg = tiny_config(epochs=50, budget="9steps", train_size=64, batch_size=16)  # 4 steps an epoch
    with pytest.raises(Interrupt):
        train(cfg, tmp_path / "r", dataset=ds, on_epoch_end=_stop_after(1))
    last = train(cfg, tmp_path / "r", dataset=ds, resume=True)
    assert last["step"] == 9 and last["epoch"] == 3 and last.get("partial")
    again = train(cfg, tmp_path / "r", dataset=ds, resume=True)  # nothing left: nothing trained
    assert again == last

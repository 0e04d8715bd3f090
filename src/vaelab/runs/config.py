"""Frozen training/evaluation config, its validation, and the named presets."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, fields
from typing import Any

from vaelab.core.errors import VaelabError
from vaelab.data import DATASETS, is_user_dataset
from vaelab.models.hierarchical import MODELS
from vaelab.models.losses import KL_SCHEDULES, LIKELIHOODS, OBJECTIVES, objective_entry
from vaelab.models.nets import ARCHS, INITS
from vaelab.models.posteriors import POSTERIORS
from vaelab.models.priors import PRIORS


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "fashion-mnist"
    train_size: int = 0  # 0 = the whole training split (after the validation split is carved off)
    val_size: int = 5000  # carved deterministically from train; the test set stays for final evaluation
    # model
    model: str = "vae"  # the whole model: vae (encoder, posterior, prior, decoder) or hierarchical (models.MODELS)
    net: str = "conv"  # the vae's encoder and decoder network (models.ARCHS); the hierarchical model has its own
    latent_dim: int = 16
    likelihood: str = "discretized_logistic"
    gaussian_sigma: float = 0.0  # gaussian likelihood only: 0 = learn one shared sigma (Rybkin et al. 2021)
    likelihood_components: int = 10  # dmol only: logistics in each pixel's mixture (PixelCNN++ uses 10)
    width: int = 64  # resnet and hierarchical: channels at full resolution (twice that below)
    depth: int = 2  # resnet and hierarchical: residual blocks per resolution
    latent_groups: int = 2  # hierarchical: latent groups at each resolution (1x1, H/4, H/2); latent_dim channels each
    temperature: float = 1.0  # hierarchical: prior temperature of the lower groups when generating (0 = their means)
    conditional: bool = False  # CVAE (Sohn et al. 2015): the label's one-hot enters encoder and decoder
    posterior: str = "gaussian"  # q(z|x): gaussian (diagonal), or iaf (the Gaussian through flow_steps IAF steps)
    flow_steps: int = 2
    flow_hidden: int = 128  # width of each IAF step's MADE, and of the encoder's context for it
    prior: str = "standard"  # p(z): standard N(0, I), mog (learned Gaussian mixture), vamp or vamp_hardtanh (VampPrior)
    prior_components: int = 10  # K of the mog and vamp priors
    init: str = "torch"  # the vae's linear layers start as torch makes them, or he: N(0, 2 / fan_in) (models.INITS)
    # objective (losses.OBJECTIVES): elbo = recon + beta_t * KL; free_bits floors each dimension's KL at free_bits
    # nats; capacity = recon + capacity_gamma * |KL - C|, C rising to capacity_max; beta_tcvae = recon +
    # tc_alpha * MI + beta_t * TC + tc_gamma * dimension-wise KL; factor_vae and dip_vae_i/ii add factor_gamma * TC
    # (by a critic) or dip_lambda * the covariance penalty to the beta-ELBO. beta_t follows kl_schedule:
    # linear (rising over warmup_epochs, Bowman et al. 2016; 0 = constant) or cyclical (Fu et al. 2019).
    objective: str = "elbo"
    beta: float = 1.0
    train_samples: int = 1  # iwae: posterior draws per image in the training bound (Burda et al. 2016's k)
    kl_schedule: str = "linear"
    warmup_epochs: float = 0.0
    kl_cycles: int = 4
    kl_cycle_ratio: float = 0.5
    free_bits: float = 0.0
    capacity_max: float = 25.0
    capacity_gamma: float = 1000.0
    tc_alpha: float = 1.0  # beta_tcvae: weight of the index-code mutual information (beta weighs the TC)
    tc_gamma: float = 1.0  # beta_tcvae: weight of the dimension-wise KL
    factor_gamma: float = 10.0  # factor_vae: weight of the critic's total-correlation estimate (Kim & Mnih 2018)
    dip_lambda: float = 10.0  # dip_vae_i / dip_vae_ii: weight of the off-diagonal covariance (Kumar et al. 2018)
    perceptual_weight: float = 0.0  # > 0 adds DFC-VAE's feature loss in the reference classifier's features
    # optimisation
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    cosine: bool = False
    grad_clip: float = 200.0  # max grad norm; 0 = off
    max_bad_steps: int = 20  # non-finite steps in a row (counted across epochs) before the run stops
    max_skip_share: float = 0.1  # an epoch that skipped more than this share of its steps has diverged
    skip_grad_norm: float = 0.0  # skip (count, do not apply) updates whose gradient norm exceeds this; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, used to evaluate and sample; 0 = off
    time_budget: float = 0.0  # seconds of training (also "30m", "1.5h"); then epochs is only an upper bound
    # a budget that means the same on every machine: "3000steps", "2e6images" or "2e13flops" (FLOPs of one training
    # step counted from the model, torch.utils.flop_counter); a time ("90s") is stored as time_budget instead
    budget: str = ""
    # fractions of the budget (of the epochs without one) at which the evaluated weights are also kept, e.g.
    # "0.25,0.5": models at those moments, so that findings can be traced along training (RUN/snapshots/)
    snapshots: str = ""
    patience: int = 0  # early stopping: stop after this many epochs without a better validation ELBO; 0 = off
    min_improvement: float = 0.0  # the relative margin that counts as better (0.001 = 0.1 %)
    seed: int = 0
    # evaluation
    test_size: int = 0  # 0 = the whole test set
    iwae_samples: int = 100
    tracker: str = ""  # "tensorboard": also log to RUN/tensorboard (metrics.jsonl stays the record)
    # hardware
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        # Every config is checked where it is made — presets, a notebook's TrainConfig(...), from_dict, replace —
        # so no code path trains on a value validate() would refuse.
        for f in fields(self):
            object.__setattr__(self, f.name, coerce(f.name, getattr(self, f.name)))
        amount, unit = parse_budget(self.budget) if self.budget else (0.0, "")
        if unit == "seconds":  # one field for a time budget: time_budget
            if self.time_budget:
                raise VaelabError("give a time budget once: --budget 90s or --time-budget 90s, not both")
            object.__setattr__(self, "time_budget", amount)
            object.__setattr__(self, "budget", "")
        # one spelling per set of fractions, so that "0.5,0.25" resumes a run made with "0.25,0.5"
        object.__setattr__(self, "snapshots", ",".join(f"{f:g}" for f in snapshot_fractions(self.snapshots)))
        validate(self)

    def replace(self, **overrides: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# One line per field: `vaelab train --help` shows it beside the flag (tests/test_cli.py checks every field has one).
HELP: dict[str, str] = {
    "dataset": "fashion-mnist, mnist, binarized-mnist, cifar10, cifar10-lossless, shapes2d, shapes2d-32, dsprites, "
    "npz:PATH or folder:PATH",
    "train_size": "training images to use (0 = all left after the validation split)",
    "val_size": "validation images carved from the training split (fixed, whatever the seed)",
    "model": "the whole model: vae (the flat VAE), hierarchical (a top-down hierarchical VAE), hvae (Tomczak & "
    "Welling's two gated levels) or two_layer (two "
    "stochastic layers of dense units, Burda et al. 2016)",
    "net": "the vae's encoder/decoder network: conv (the study's), mlp, mlp_tanh, mlp_gated, resnet or conv4",
    "latent_dim": "latent dimensions (per group for the hierarchical model)",
    "likelihood": "p(x|z): bernoulli, gaussian, discretized_logistic or dmol (mixture of logistics)",
    "gaussian_sigma": "gaussian likelihood's sigma (0 = learn one shared sigma)",
    "likelihood_components": "dmol: logistics in each pixel's mixture",
    "width": "resnet and hierarchical: channels at full resolution",
    "depth": "resnet and hierarchical: residual blocks per resolution",
    "latent_groups": "hierarchical: latent groups at each resolution",
    "temperature": "hierarchical: prior temperature of the lower groups when generating",
    "conditional": "a conditional VAE: the label enters encoder and decoder",
    "posterior": "q(z|x): gaussian, gaussian_hardtanh (log-variance in [-6, 2], one-sample KL) or iaf (inverse "
    "autoregressive flow)",
    "flow_steps": "iaf: flow steps",
    "flow_hidden": "iaf: width of each step's MADE",
    "prior": "p(z): standard, mog (learned mixture), vamp (VampPrior) or vamp_hardtanh (its pseudo-inputs clipped to "
    "[0, 1], as Tomczak & Welling's code)",
    "prior_components": "mog and vamp: mixture components",
    "objective": "elbo, free_bits, capacity, beta_tcvae, factor_vae, dip_vae_i, dip_vae_ii or iwae",
    "beta": "weight of the KL term (of the total correlation for beta_tcvae)",
    "train_samples": "iwae: importance samples per image in the training bound (k)",
    "kl_schedule": "linear (warm-up over warmup_epochs) or cyclical",
    "warmup_epochs": "epochs over which the KL weight rises from 0 to beta (0 = constant)",
    "kl_cycles": "cyclical schedule: cycles over training",
    "kl_cycle_ratio": "cyclical schedule: share of each cycle spent rising",
    "free_bits": "free_bits: the KL floor of each dimension, in nats",
    "capacity_max": "capacity: the KL target reached at the end of training, in nats",
    "capacity_gamma": "capacity: weight of |KL - C|",
    "tc_alpha": "beta_tcvae: weight of the index-code mutual information",
    "tc_gamma": "beta_tcvae: weight of the dimension-wise KL",
    "factor_gamma": "factor_vae: weight of the critic's total-correlation estimate",
    "dip_lambda": "dip_vae_i/ii: weight of the covariance penalty",
    "perceptual_weight": "weight of a feature-perceptual term in the reference classifier's features (0 = off)",
    "epochs": "training epochs (an upper bound under a time budget)",
    "batch_size": "images per step",
    "lr": "learning rate",
    "init": "initial weights of the vae's linear layers: torch (its default) or he (N(0, 2 / fan_in) weights, as "
    "Tomczak & Welling's code)",
    "optimizer": "adam, adamw, or adam_normgrad (each gradient tensor scaled to unit norm first, as Tomczak & "
    "Welling 2018 trained)",
    "weight_decay": "weight decay (decoupled for adamw)",
    "cosine": "cosine-anneal the learning rate to 0 over training",
    "grad_clip": "clip the gradient norm to this (0 = off)",
    "max_bad_steps": "non-finite steps in a row before the run stops as diverged",
    "max_skip_share": "an epoch that skipped more than this share of its steps has diverged",
    "skip_grad_norm": "skip updates whose gradient norm exceeds this (0 = off)",
    "ema": "decay of an exponential moving average of the weights, used to evaluate and sample (0 = off)",
    "time_budget": "train for this long (45s, 30m, 1.5h), the learning-rate schedule spread over it",
    "budget": "train for this many steps, images or FLOPs (3000steps, 2e6images, 2e13flops; or a time, 90s): the same "
    "model on every machine, the learning-rate schedule spread over it",
    "snapshots": "fractions of the budget at which the evaluated weights are also kept (0.25,0.5; with --ema they "
    "are good models at that moment), for findings traced along training",
    "patience": "stop after this many epochs without a better validation ELBO, keeping the best (0 = off)",
    "min_improvement": "relative margin that counts as better for patience (0.001 = 0.1 %)",
    "seed": "random seed: weights, data order and noise",
    "test_size": "test images to evaluate on (0 = all)",
    "iwae_samples": "importance samples K of the IWAE bound",
    "tracker": "tensorboard: also log to RUN/tensorboard",
    "device": "auto, cpu or cuda",
    "bf16": "bf16 autocast (CUDA and CPUs with bf16 support)",
    "channels_last": "channels-last memory format",
    "compile": "torch.compile the model",
}


FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {f.name: type(f.default) for f in fields(TrainConfig)}

OPTIMIZERS = {  # what each is; training.optim builds them
    "adam": "Adam (Kingma & Ba 2015)",
    "adamw": "Adam with decoupled weight decay (Loshchilov & Hutter 2019)",
    "adam_normgrad": "Adam on each parameter's gradient scaled to unit L2 norm (Tomczak & Welling's AdamNormGrad)",
}
TRACKERS = ("", "tensorboard")
DEVICES = ("auto", "cpu", "cuda")


def unknown_key_message(key: str, known: list[str] | dict) -> str:
    key = str(key)
    close = difflib.get_close_matches(key, [str(k) for k in known], n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field '{key}'{hint}"


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(value: Any) -> float:
    """Seconds from 90, "90", "45s", "30m" or "1.5h"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    unit = _UNITS.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1)
    except ValueError:
        raise VaelabError(
            f"not a duration: {value!r} (use seconds, or a number with s, m or h: 45s, 30m, 1.5h)"
        ) from None
    if not math.isfinite(seconds):
        raise VaelabError(f"not a duration: {value!r}")
    return seconds


BUDGET_UNITS = ("steps", "images", "flops")


def parse_budget(value: str) -> tuple[float, str]:
    """(amount, unit) of a budget: "3000steps", "2e6images", "2e13flops", or a duration ("90s", "30m") in seconds."""
    text = str(value).strip().lower()
    word = re.fullmatch(r"([0-9.eE+-]*)\s*([a-z]*)", text)
    unit = word.group(2) if word else "?"
    if unit not in BUDGET_UNITS and unit not in _UNITS:
        raise VaelabError(f"not a budget: {value!r} (use 3000steps, 2e6images, 2e13flops or a time: 90s, 30m)")
    if unit not in BUDGET_UNITS:
        amount, unit = parse_duration(text), "seconds"
    else:
        try:
            amount = float(word.group(1))
        except ValueError:
            raise VaelabError(f"not a budget: {value!r} (a number before '{unit}', e.g. 3000{unit})") from None
    if not (math.isfinite(amount) and amount >= 1):
        raise VaelabError(f"a budget must be at least 1 {unit}, got {value!r}")
    if unit in ("steps", "images") and amount != int(amount):
        raise VaelabError(f"a budget of {unit} is a whole number, got {value!r}")
    return amount, unit


def snapshot_fractions(value: str) -> tuple[float, ...]:
    """The sorted fractions of a `snapshots` field ("0.25,0.5"), each in (0, 1): the end of training is the run's
    own model."""
    if not str(value).strip():
        return ()
    try:
        fractions = sorted({float(v) for v in str(value).split(",")})
    except ValueError:
        raise VaelabError(f"snapshots must be fractions separated by commas (0.25,0.5), got {value!r}") from None
    if not all(0 < f < 1 for f in fractions):
        raise VaelabError(f"snapshots must be fractions in (0, 1) (the end is the run's model), got {value!r}")
    return tuple(fractions)


def coerce(key: str, value: Any) -> Any:
    """Check one field's type (ints are accepted where floats are expected); raise on anything else."""
    if key == "arch":  # vaelab 0.1's name for both
        raise VaelabError("field 'arch' is now two: model (vae or hierarchical) and net (conv, mlp, resnet, conv4)")
    if key not in FIELDS:
        raise VaelabError(unknown_key_message(key, FIELDS))
    if key == "time_budget" and isinstance(value, str):  # durations may be written with a unit
        value = parse_duration(value)
    want = _TYPES[key]
    if want is bool:
        if isinstance(value, bool):
            return value
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise VaelabError(f"field '{key}' is too large: {value}") from None
            if not math.isfinite(value):
                raise VaelabError(f"field '{key}' must be a finite number, got {value}")
            return value
    elif want is str:
        if isinstance(value, str):
            return value
    raise VaelabError(f"field '{key}' must be {want.__name__}, got {value!r}")


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise VaelabError(msg)


# (field, the values it takes, how the message says it): checked for every config
_RANGES = (
    ("latent_groups", lambda v: 1 <= v <= 64, "in 1..64"),
    ("temperature", lambda v: 0 <= v <= 10, "in [0, 10]"),
    ("kl_cycles", lambda v: v >= 1, ">= 1"),
    ("kl_cycle_ratio", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("free_bits", lambda v: v >= 0, ">= 0"),
    ("perceptual_weight", lambda v: v >= 0, ">= 0"),
    ("prior_components", lambda v: 1 <= v <= 10_000, "in 1..10000"),
    ("latent_dim", lambda v: v >= 1, ">= 1"),
    ("beta", lambda v: v >= 0, ">= 0"),
    ("warmup_epochs", lambda v: v >= 0, ">= 0"),
    ("epochs", lambda v: v >= 1, ">= 1"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("lr", lambda v: v > 0, "> 0"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("grad_clip", lambda v: v >= 0, ">= 0"),
    ("max_bad_steps", lambda v: v >= 1, ">= 1"),
    ("gaussian_sigma", lambda v: v >= 0, ">= 0"),
    ("train_size", lambda v: v >= 0, ">= 0"),
    ("val_size", lambda v: v >= 0, ">= 0"),
    ("test_size", lambda v: v >= 0, ">= 0"),
    ("iwae_samples", lambda v: v >= 1, ">= 1"),
    ("train_samples", lambda v: 1 <= v <= 10_000, "in 1..10000"),
    ("seed", lambda v: 0 <= v < 2**32, "in 0..2**32-1"),
    ("max_skip_share", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("skip_grad_norm", lambda v: v >= 0, ">= 0"),
    ("ema", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("patience", lambda v: v >= 0, ">= 0"),
    ("min_improvement", lambda v: 0 <= v < 1, "in [0, 1)"),
)
# Counts far beyond any machine are refused here; sizes that merely exceed this one's memory are refused where the
# tensors are made (checkpoint.check_fits), before allocating.
_COUNTS = (
    "latent_dim",
    "epochs",
    "batch_size",
    "train_size",
    "val_size",
    "test_size",
    "iwae_samples",
    "max_bad_steps",
    "patience",
)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject impossible values before anything trains."""
    _check_parts(cfg)
    _check_combinations(cfg)
    for name, ok, text in _RANGES:
        _need(ok(getattr(cfg, name)), f"{name} must be {text}, got {getattr(cfg, name)}")
    _need(0 <= cfg.time_budget <= 30 * 86400, f"time_budget must be between 0 and 30 days, got {cfg.time_budget} s")
    if cfg.budget:
        parse_budget(cfg.budget)
        _need(
            not cfg.time_budget,
            f"give one budget, a count (budget {cfg.budget}) or a time (time_budget {cfg.time_budget:g} s), not both "
            "(--budget '' clears a preset's count)",
        )
    snapshot_fractions(cfg.snapshots)
    for name in _COUNTS:
        _need(getattr(cfg, name) < 2**31, f"{name} is too large: {getattr(cfg, name)}")
    return cfg


def _known(kind: str, value: str, known) -> None:
    _need(value in known, f"unknown {kind} '{value}' (known: {', '.join(k for k in known if k)})")


def _check_parts(cfg: TrainConfig) -> None:
    """Every named part is in its registry."""
    _need(
        cfg.dataset in DATASETS or is_user_dataset(cfg.dataset),
        f"unknown dataset '{cfg.dataset}' (known: {', '.join(DATASETS)}, or npz:PATH or folder:PATH for your own "
        "images)",
    )
    _known("model", cfg.model, ["vae", *MODELS])
    _known("net", cfg.net, ARCHS)
    _known("likelihood", cfg.likelihood, LIKELIHOODS)
    _known("prior", cfg.prior, PRIORS)
    _known("posterior", cfg.posterior, POSTERIORS)
    _known("init", cfg.init, INITS)
    _known("objective", cfg.objective, OBJECTIVES)
    _known("kl_schedule", cfg.kl_schedule, KL_SCHEDULES)
    _known("optimizer", cfg.optimizer, OPTIMIZERS)
    _known("device", cfg.device, DEVICES)
    _known("tracker", cfg.tracker, TRACKERS)


def _check_combinations(cfg: TrainConfig) -> None:
    """Parts and sizes that only work together."""
    _need(1 <= cfg.width <= 4096 and 0 <= cfg.depth <= 256, "width must be in 1..4096 and depth in 0..256")
    sized = cfg.model != "vae" or ARCHS[cfg.net].sized
    _need(
        sized or (cfg.width, cfg.depth) == (FIELDS["width"].default, FIELDS["depth"].default),
        f"width and depth size the resnet and hierarchical networks; the {cfg.net} network has a fixed size",
    )
    _need(
        cfg.model == "vae" or cfg.net == FIELDS["net"].default,
        f"the {cfg.model} model has its own network: leave --net at its default",
    )
    _need(
        cfg.model == "vae" or cfg.init == FIELDS["init"].default,
        f"the {cfg.model} model initialises its own layers: leave --init at its default",
    )
    if cfg.model == "hierarchical":  # its posteriors and priors are the per-group Gaussians of the top-down pass
        _need(
            cfg.posterior == "gaussian" and cfg.prior == "standard" and not cfg.conditional,
            "the hierarchical model has its own per-group posteriors and priors: use it with the default "
            "--posterior, --prior and without --conditional",
        )
        works = [o for o in OBJECTIVES if objective_entry(o).hierarchical]
        _need(
            cfg.objective in works,
            f"the hierarchical model supports the {', '.join(works[:-1])} and {works[-1]} "
            f"objectives, not {cfg.objective}",
        )
    _check_two_layer(cfg)
    _need(
        1 <= cfg.likelihood_components <= 100,
        f"likelihood_components must be in 1..100, got {cfg.likelihood_components}",
    )
    _need(1 <= cfg.flow_steps <= 64 and 1 <= cfg.flow_hidden <= 65536, "flow_steps must be in 1..64, flow_hidden >= 1")
    _need(
        not (cfg.posterior == "iaf" and PRIORS[cfg.prior].uses_encoder),
        f"the {cfg.prior} prior mixes Gaussian posteriors: use it with --posterior gaussian",
    )
    _need(cfg.capacity_max >= 0 and cfg.capacity_gamma >= 0, "capacity_max and capacity_gamma must be >= 0")
    _need(
        not objective_entry(cfg.objective).needs_gaussian_code
        or cfg.model == "hierarchical"
        or (cfg.prior == "standard" and cfg.posterior == "gaussian"),
        f"the {cfg.objective} objective needs the factorised standard prior and the gaussian posterior",
    )
    _need(cfg.tc_alpha >= 0 and cfg.tc_gamma >= 0, "tc_alpha and tc_gamma must be >= 0")
    _need(
        cfg.train_samples == 1 or bool(objective_entry(cfg.objective).samples),
        f"train_samples {cfg.train_samples} needs an objective that reads several draws per image (iwae)",
    )
    _need(cfg.factor_gamma >= 0 and cfg.dip_lambda >= 0, "factor_gamma and dip_lambda must be >= 0")
    _need(
        not (PRIORS[cfg.prior].uses_encoder and cfg.conditional),
        f"the {cfg.prior} prior needs an unconditional model (no --conditional)",
    )
    _need(not cfg.patience or cfg.val_size > 0, "early stopping (patience) needs a validation set (val_size > 0)")


def _check_two_layer(cfg: TrainConfig) -> None:
    """The two-stochastic-layer models have their own Gaussian layers and a one-draw KL: two_layer with N(0, I) on
    top, hvae with N(0, I) or the VampPrior."""
    if cfg.model not in ("two_layer", "hvae"):
        return
    priors = ("standard", *(p for p, c in PRIORS.items() if c.uses_encoder)) if cfg.model == "hvae" else ("standard",)
    _need(
        cfg.posterior == "gaussian" and cfg.prior in priors and not cfg.conditional,
        f"the {cfg.model} model has its own Gaussian layers: use it with the default --posterior, --prior "
        f"{' or '.join(priors)}, without --conditional",
    )
    _need(
        cfg.objective in ("elbo", "iwae") and cfg.likelihood != "dmol",
        f"the {cfg.model} model trains with the elbo or iwae objective and a one-parameter or two-parameter "
        "likelihood (not dmol)",
    )


def config_diff(stored: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (stored, wanted)} for every field where two configs differ."""
    return {k: (v, getattr(wanted, k)) for k, v in stored.to_dict().items() if getattr(wanted, k) != v}


def upgrade(d: dict[str, Any]) -> dict[str, Any]:
    """A config mapping written before 0.2 named network and model in one field, `arch`: its value is the
    hierarchical model (-> model) or a network (-> net)."""
    if "arch" not in d:
        return d
    d = dict(d)
    value = d.pop("arch")
    d.setdefault("model" if value in MODELS else "net", value)
    return d


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build a validated config; unknown keys and wrong types raise VaelabError. Configs of vaelab 0.1 (with
    `arch`) are read too (upgrade)."""
    if not isinstance(d, dict):
        raise VaelabError(f"a config must be a mapping of fields to values, got {type(d).__name__}")
    d = upgrade(d)
    return TrainConfig(**{k: coerce(k, v) for k, v in d.items()})  # TrainConfig validates itself

"""Frozen training/evaluation config, its validation, and the named presets."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, fields
from typing import Any

from . import VaelabError


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "fashion-mnist"
    train_size: int = 0  # 0 = the whole training split (after the validation split is carved off)
    val_size: int = 5000  # carved deterministically from train; the test set stays for final evaluation
    # model
    arch: str = "conv"
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
    prior: str = "standard"  # p(z): standard N(0, I), mog (learned Gaussian mixture) or vamp (VampPrior)
    prior_components: int = 10  # K of the mog and vamp priors
    # objective (losses.OBJECTIVES): elbo = recon + beta_t * KL; free_bits floors each dimension's KL at free_bits
    # nats; capacity = recon + capacity_gamma * |KL - C|, C rising to capacity_max; beta_tcvae = recon +
    # tc_alpha * MI + beta_t * TC + tc_gamma * dimension-wise KL; factor_vae and dip_vae_i/ii add factor_gamma * TC
    # (by a critic) or dip_lambda * the covariance penalty to the beta-ELBO. beta_t follows kl_schedule:
    # linear (rising over warmup_epochs, Bowman et al. 2016; 0 = constant) or cyclical (Fu et al. 2019).
    objective: str = "elbo"
    beta: float = 1.0
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
        validate(self)

    def replace(self, **overrides: Any) -> "TrainConfig":
        return from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {f.name: type(f.default) for f in fields(TrainConfig)}

OPTIMIZERS = ("adam", "adamw")
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
        raise VaelabError(f"not a duration: {value!r} (use seconds, or a number with s, m or h: 45s, 30m, 1.5h)") from None
    if not math.isfinite(seconds):
        raise VaelabError(f"not a duration: {value!r}")
    return seconds


def coerce(key: str, value: Any) -> Any:
    """Check one field's type (ints are accepted where floats are expected); raise on anything else."""
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


def validate(cfg: TrainConfig) -> TrainConfig:
    """Reject impossible values before anything trains."""
    from .data import DATASETS
    from .userdata import is_user_dataset
    from .losses import KL_SCHEDULES, LIKELIHOODS, NEEDS_GAUSSIAN_CODE, OBJECTIVES
    # the registries' own modules, not the models package: this runs while that package may still be importing
    from .models.hierarchical import MODELS
    from .models.nets import ARCHS
    from .models.posteriors import POSTERIORS
    from .models.priors import PRIORS

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise VaelabError(msg)

    need(cfg.dataset in DATASETS or is_user_dataset(cfg.dataset),
         f"unknown dataset '{cfg.dataset}' (known: {', '.join(DATASETS)}, or npz:PATH or folder:PATH for your own "
         "images)")
    need(cfg.arch in ARCHS or cfg.arch in MODELS, f"unknown arch '{cfg.arch}' (known: {', '.join([*ARCHS, *MODELS])})")
    need(1 <= cfg.width <= 4096 and 0 <= cfg.depth <= 256, "width must be in 1..4096 and depth in 0..256")
    sized = cfg.arch in MODELS or ARCHS[cfg.arch].sized
    need(sized or (cfg.width, cfg.depth) == (FIELDS["width"].default, FIELDS["depth"].default),
         f"width and depth size the resnet and hierarchical networks; the {cfg.arch} network has a fixed size")
    need(1 <= cfg.latent_groups <= 64, f"latent_groups must be in 1..64, got {cfg.latent_groups}")
    need(0 <= cfg.temperature <= 10, f"temperature must be in [0, 10], got {cfg.temperature}")
    if cfg.arch == "hierarchical":  # its posteriors and priors are the per-group Gaussians of the top-down pass
        need(cfg.posterior == "gaussian" and cfg.prior == "standard" and not cfg.conditional,
             "the hierarchical model has its own per-group posteriors and priors: use it with the default "
             "--posterior, --prior and without --conditional")
        need(cfg.objective in ("elbo", "capacity", "free_bits"),
             f"the hierarchical model supports the elbo, capacity and free_bits objectives, not {cfg.objective}")
    need(1 <= cfg.likelihood_components <= 100, f"likelihood_components must be in 1..100, got {cfg.likelihood_components}")
    need(cfg.likelihood in LIKELIHOODS, f"unknown likelihood '{cfg.likelihood}' (known: {', '.join(LIKELIHOODS)})")
    need(cfg.prior in PRIORS, f"unknown prior '{cfg.prior}' (known: {', '.join(PRIORS)})")
    need(cfg.posterior in POSTERIORS, f"unknown posterior '{cfg.posterior}' (known: {', '.join(POSTERIORS)})")
    need(1 <= cfg.flow_steps <= 64 and 1 <= cfg.flow_hidden <= 65536, "flow_steps must be in 1..64, flow_hidden >= 1")
    need(not (cfg.posterior == "iaf" and cfg.prior == "vamp"),
         "the vamp prior mixes Gaussian posteriors: use it with --posterior gaussian")
    need(cfg.objective in OBJECTIVES, f"unknown objective '{cfg.objective}' (known: {', '.join(OBJECTIVES)})")
    need(cfg.kl_schedule in KL_SCHEDULES, f"unknown kl_schedule '{cfg.kl_schedule}' (known: {', '.join(KL_SCHEDULES)})")
    need(cfg.kl_cycles >= 1, f"kl_cycles must be >= 1, got {cfg.kl_cycles}")
    need(0 < cfg.kl_cycle_ratio <= 1, f"kl_cycle_ratio must be in (0, 1], got {cfg.kl_cycle_ratio}")
    need(cfg.free_bits >= 0, f"free_bits must be >= 0, got {cfg.free_bits}")
    need(cfg.capacity_max >= 0 and cfg.capacity_gamma >= 0, "capacity_max and capacity_gamma must be >= 0")
    need(cfg.objective not in NEEDS_GAUSSIAN_CODE or cfg.arch == "hierarchical"
         or (cfg.prior == "standard" and cfg.posterior == "gaussian"),
         f"the {cfg.objective} objective needs the factorised standard prior and the gaussian posterior")
    need(cfg.tc_alpha >= 0 and cfg.tc_gamma >= 0, "tc_alpha and tc_gamma must be >= 0")
    need(cfg.factor_gamma >= 0 and cfg.dip_lambda >= 0, "factor_gamma and dip_lambda must be >= 0")
    need(cfg.perceptual_weight >= 0, f"perceptual_weight must be >= 0, got {cfg.perceptual_weight}")
    need(1 <= cfg.prior_components <= 10_000, f"prior_components must be in 1..10000, got {cfg.prior_components}")
    need(not (cfg.prior == "vamp" and cfg.conditional), "the vamp prior needs an unconditional model (no --conditional)")
    need(cfg.optimizer in OPTIMIZERS, f"unknown optimizer '{cfg.optimizer}' (known: {', '.join(OPTIMIZERS)})")
    need(cfg.device in DEVICES, f"unknown device '{cfg.device}' (known: {', '.join(DEVICES)})")
    need(cfg.latent_dim >= 1, f"latent_dim must be >= 1, got {cfg.latent_dim}")
    need(cfg.beta >= 0, f"beta must be >= 0, got {cfg.beta}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.grad_clip >= 0, f"grad_clip must be >= 0, got {cfg.grad_clip}")
    need(cfg.max_bad_steps >= 1, f"max_bad_steps must be >= 1, got {cfg.max_bad_steps}")
    need(cfg.gaussian_sigma >= 0, f"gaussian_sigma must be >= 0, got {cfg.gaussian_sigma}")
    need(cfg.train_size >= 0, f"train_size must be >= 0, got {cfg.train_size}")
    need(cfg.val_size >= 0, f"val_size must be >= 0, got {cfg.val_size}")
    need(cfg.test_size >= 0, f"test_size must be >= 0, got {cfg.test_size}")
    need(cfg.iwae_samples >= 1, f"iwae_samples must be >= 1, got {cfg.iwae_samples}")
    need(0 <= cfg.seed < 2 ** 32, f"seed must be in 0..2**32-1, got {cfg.seed}")
    need(0 <= cfg.max_skip_share <= 1, f"max_skip_share must be in [0, 1], got {cfg.max_skip_share}")
    need(cfg.skip_grad_norm >= 0, f"skip_grad_norm must be >= 0, got {cfg.skip_grad_norm}")
    need(0 <= cfg.ema < 1, f"ema must be in [0, 1), got {cfg.ema}")
    need(cfg.tracker in TRACKERS, f"unknown tracker '{cfg.tracker}' (known: {', '.join(t for t in TRACKERS if t)})")
    need(cfg.patience >= 0, f"patience must be >= 0, got {cfg.patience}")
    need(not cfg.patience or cfg.val_size > 0, "early stopping (patience) needs a validation set (val_size > 0)")
    need(0 <= cfg.min_improvement < 1, f"min_improvement must be in [0, 1), got {cfg.min_improvement}")
    need(0 <= cfg.time_budget <= 30 * 86400, f"time_budget must be between 0 and 30 days, got {cfg.time_budget} s")
    # Counts far beyond any machine are refused here; sizes that merely exceed this one's memory are refused
    # where the tensors are made (train.check_fits), before allocating.
    for name in ("latent_dim", "epochs", "batch_size", "train_size", "val_size", "test_size", "iwae_samples",
                 "max_bad_steps", "patience"):
        need(getattr(cfg, name) < 2 ** 31, f"{name} is too large: {getattr(cfg, name)}")
    return cfg


def config_diff(stored: TrainConfig, wanted: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (stored, wanted)} for every field where two configs differ."""
    return {k: (v, getattr(wanted, k)) for k, v in stored.to_dict().items() if getattr(wanted, k) != v}


def from_dict(d: dict[str, Any]) -> TrainConfig:
    """Build a validated config; unknown keys and wrong types raise VaelabError."""
    if not isinstance(d, dict):
        raise VaelabError(f"a config must be a mapping of fields to values, got {type(d).__name__}")
    return TrainConfig(**{k: coerce(k, v) for k, v in d.items()})  # TrainConfig validates itself


# Presets: the study's reference settings per dataset (the seed study used latent 2..128 conv VAEs).
PRESETS: dict[str, TrainConfig] = {
    "fashion-mnist": TrainConfig(dataset="fashion-mnist", latent_dim=16),
    "cifar10": TrainConfig(dataset="cifar10", latent_dim=128),
    "cifar10-lossless": TrainConfig(dataset="cifar10-lossless", latent_dim=128, val_size=500),
    "demo": TrainConfig(dataset="fashion-mnist", latent_dim=16, epochs=5, train_size=20000, iwae_samples=100),
}
# The deeper models, sized for a machine: a hierarchical VAE with the mixture-of-logistics decoder, trained for a
# wall-clock budget (epochs only bound it) with a cosine schedule over the budget and an EMA of the weights.
_HVAE = dict(arch="hierarchical", likelihood="dmol", ema=0.999, cosine=True, lr=2e-3, epochs=10_000)
PRESETS.update({
    # 2 CPU cores: about 100-200 images/s; evaluation on 1,000 test images keeps K = 100 IWAE to minutes
    "cifar10-hvae-cpu": TrainConfig(dataset="cifar10", latent_dim=8, width=32, depth=1, latent_groups=1,
                                    batch_size=64, time_budget=3600.0, test_size=1000, **_HVAE),
    # ten minutes are ~2,000 steps: a shorter EMA horizon (~100 steps) than the hour-long runs' (~1,000)
    "fashion-mnist-hvae-cpu": TrainConfig(dataset="fashion-mnist", latent_dim=8, width=32, depth=1,
                                          latent_groups=1, batch_size=64, time_budget=600.0,
                                          **{**_HVAE, "ema": 0.99}),
    # one GPU: wider and deeper, two groups per resolution, bf16 autocast. No skip_grad_norm: at 3000 it skipped every
    # step of this model on an H200 (2026-11-30; its gradient norms start far above that), so it never trained
    "cifar10-hvae-gpu": TrainConfig(dataset="cifar10", latent_dim=16, width=128, depth=2, latent_groups=2,
                                    batch_size=128, time_budget=1200.0, bf16=True, grad_clip=200.0, **_HVAE),
})


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise VaelabError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]

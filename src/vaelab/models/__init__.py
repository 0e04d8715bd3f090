"""Models as parts: networks (ARCHS), posteriors (POSTERIORS), priors (PRIORS), and the models built from them."""

from .nets import ARCHS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from .posteriors import IAF, MADE, POSTERIORS, GaussianPosterior, IAFPosterior
from .priors import PRIORS, MixtureOfGaussians, Prior, StandardNormal, VampPrior
from .hierarchical import HierarchicalVAE
from .vae import VAE


def _hierarchical(cfg, shape, num_classes):
    return HierarchicalVAE(shape, cfg.latent_dim, cfg.likelihood, cfg.gaussian_sigma, cfg.width, cfg.depth,
                           cfg.likelihood_components, cfg.latent_groups, cfg.temperature)


# Models other than the flat VAE, by `arch`; every other arch is the flat VAE with that encoder/decoder pair.
MODELS = {"hierarchical": _hierarchical}


def build(cfg, shape: tuple[int, int, int], num_classes: int = 10):
    """The model a config describes (weights freshly initialised from the current torch seed)."""
    if cfg.arch in MODELS:
        return MODELS[cfg.arch](cfg, tuple(shape), num_classes)
    return VAE.from_config(cfg, tuple(shape), num_classes)

__all__ = ["ARCHS", "ConvDecoder", "ConvEncoder", "MLPDecoder", "MLPEncoder", "IAF", "MADE", "POSTERIORS",
           "GaussianPosterior", "IAFPosterior", "PRIORS", "MixtureOfGaussians", "Prior", "StandardNormal", "VampPrior",
           "VAE", "HierarchicalVAE", "MODELS", "build"]

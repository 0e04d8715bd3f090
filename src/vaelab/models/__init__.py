"""Models as parts: networks (ARCHS), posteriors (POSTERIORS), priors (PRIORS), and the models built from them."""

from vaelab.models.hierarchical import MODELS, HierarchicalVAE
from vaelab.models.nets import ARCHS, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from vaelab.models.posteriors import IAF, MADE, POSTERIORS, GaussianPosterior, IAFPosterior
from vaelab.models.priors import PRIORS, MixtureOfGaussians, Prior, StandardNormal, VampPrior
from vaelab.models.vae import VAE


def build(cfg, shape: tuple[int, int, int], num_classes: int = 10):
    """The model a config describes (weights freshly initialised from the current torch seed)."""
    if cfg.model in MODELS:
        return MODELS[cfg.model](cfg, tuple(shape), num_classes)
    return VAE.from_config(cfg, tuple(shape), num_classes)


__all__ = [
    "ARCHS",
    "ConvDecoder",
    "ConvEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "IAF",
    "MADE",
    "POSTERIORS",
    "GaussianPosterior",
    "IAFPosterior",
    "PRIORS",
    "MixtureOfGaussians",
    "Prior",
    "StandardNormal",
    "VampPrior",
    "VAE",
    "HierarchicalVAE",
    "MODELS",
    "build",
]

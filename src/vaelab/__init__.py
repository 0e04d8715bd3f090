"""vaelab: train, evaluate and compare Variational Autoencoders on image data."""

from .errors import VaelabError
from .export import load
from .version import __version__

__all__ = ["VaelabError", "__version__", "load"]

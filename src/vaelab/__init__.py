"""vaelab: train, evaluate and compare Variational Autoencoders on image data."""

__version__ = "0.1.0"


class VaelabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


def load(path, device: str = "cpu"):
    """A model exported with `vaelab export RUN FILE.safetensors`, in eval mode (no pickle: safe to load)."""
    from .export import load as _load

    return _load(path, device)

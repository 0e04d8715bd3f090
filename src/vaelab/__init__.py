"""vaelab: train, evaluate and compare Variational Autoencoders on image data."""

from vaelab.core import moved
from vaelab.core.errors import VaelabError
from vaelab.version import __version__

moved.install()  # the paths modules had before 0.3 still import, with a DeprecationWarning

__all__ = ["VaelabError", "__version__", "load"]


def __getattr__(name: str):
    """`vaelab.load`, imported when first asked for: `import vaelab` (and the command's start) stays light, so that
    Ctrl-C while it starts is one line, not a traceback from inside torch's import."""
    if name == "load":
        from vaelab.exports.bundle import load

        return load
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")

"""vaelab's version. 0.2: checkpoints are safetensors + JSON (format 2); 0.1 wrote pickles (CHANGELOG.md)."""

__version__ = "0.2.0"

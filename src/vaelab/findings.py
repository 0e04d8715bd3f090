"""Deprecated: the findings moved to `vaelab.study.findings` (0.3.0); this alias warns and goes in the next release."""

import warnings

from .study import findings as _moved

warnings.warn(
    "vaelab.findings moved to vaelab.study.findings; the old name goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)


def __getattr__(name: str):
    return getattr(_moved, name)

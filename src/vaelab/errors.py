"""The one exception type users see: the CLI prints its message on one line and exits with code 2."""


class VaelabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""

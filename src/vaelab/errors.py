"""The one exception type users see: the CLI prints its message on one line and exits with code 2."""


class VaelabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler ending a job) taken as Ctrl-C is: every path that stops cleanly on Ctrl-C —
    atomic checkpoints, a study ending its worker processes — does so on SIGTERM too; the exit code is 143."""

"""The errors users see: VaelabError, Terminated, and the one line any error a user can act on is told in."""


class VaelabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler ending a job) taken as Ctrl-C is: every path that stops cleanly on Ctrl-C —
    atomic checkpoints, a study ending its worker processes — does so on SIGTERM too; the exit code is 143."""


def on_sigterm(signum, frame):
    """A SIGTERM handler: raise Terminated, so the process stops as it stops on Ctrl-C (Python's default SIGTERM ends
    it at once: workers would train on as orphans, checkpoints half done)."""
    raise Terminated()


OUT_OF_MEMORY = "out of memory; use smaller sizes (--batch-size, --latent-dim, --n, --iwae-samples)"


def describe(e: BaseException) -> str | None:
    """The one line (exit code 2) for an error the user can act on: bad input, permissions, a full disk, memory;
    None for anything else (a bug, which keeps its traceback). The CLI and every launched process use it."""
    if isinstance(e, VaelabError):
        text = str(e)
    elif isinstance(e, PermissionError):
        text = f"{e.filename}: permission denied"
    elif isinstance(e, MemoryError):
        text = OUT_OF_MEMORY
    elif isinstance(e, OSError):  # disk full, I/O errors: name the file when the OS does
        text = (f"{e.filename}: " if e.filename else "") + str(e.strerror or e)
    elif isinstance(e, RuntimeError) and ("alloc" in str(e).lower() or "out of memory" in str(e).lower()):
        text = OUT_OF_MEMORY  # torch's allocator, CPU or CUDA
    else:
        return None
    return f"vaelab: error: {' '.join(text.split())}"

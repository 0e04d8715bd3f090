"""The `vaelab` command line: train, evaluate, sample, reconstruct, datasets (and the study and report tools)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .. import distributed
from ..errors import Terminated, VaelabError
from ..version import __version__
from . import parsers


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage on one line (exit 2), not a usage block."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vaelab",
        description="Train, evaluate and compare Variational Autoencoders on image data.",
        epilog="Run 'vaelab COMMAND --help' for each command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name, help_, examples):
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    parsers.add_all(add)
    return p


def _resume_hint(args) -> str:
    if args.command == "train":
        return f"continue with: vaelab train --resume --out {args.out}"
    if args.command == "study" and args.target[:1] != ["status"]:
        return "run the same 'vaelab study' command again to continue (finished runs are kept)"
    return "nothing was changed"


def _error(msg: str) -> int:
    print(f"vaelab: error: {' '.join(str(msg).split())}", file=sys.stderr)  # one line, always
    return 2


def _on_sigterm(signum, frame):
    raise Terminated()


def _interrupt_once(signum, frame):
    """A launched worker stops at the first Ctrl-C and ignores the copies that follow while it unwinds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # what --nproc hands each process it starts
    # Python's default SIGTERM ends the process at once: a study's worker processes would train on as orphans.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    if in_main and os.environ.get(distributed.WORKER):  # Ctrl-C reaches a worker twice (the terminal, the launcher)
        signal.signal(signal.SIGINT, _interrupt_once)
    try:
        return _dispatch(args)
    finally:
        if previous is not None:  # None: not on the main thread, or a handler installed outside Python
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except VaelabError as e:
        return _error(str(e))
    except PermissionError as e:
        return _error(f"{e.filename}: permission denied")
    except MemoryError:
        return _error("out of memory; use smaller sizes (--batch-size, --latent-dim, --n, --iwae-samples)")
    except OSError as e:  # disk full, I/O errors: name the file when the OS does
        where = f"{e.filename}: " if e.filename else ""
        return _error(f"{where}{e.strerror or e}")
    except RuntimeError as e:
        if "alloc" in str(e).lower() or "out of memory" in str(e).lower():  # torch's allocator, CPU or CUDA
            return _error("out of memory; use smaller sizes (--batch-size, --latent-dim, --n, --iwae-samples)")
        if os.environ.get(distributed.WORKER):  # a peer's death breaks this process's collectives: one line
            return _error(
                f"process {distributed.from_env().rank}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            )
        raise
    except KeyboardInterrupt as e:
        if not os.environ.get(distributed.WORKER):  # `vaelab train --nproc N` reports it once, for all
            print(f"vaelab: interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130

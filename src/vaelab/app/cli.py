"""The `vaelab` command line: train, evaluate, sample, reconstruct, datasets (and the study and report tools)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings

from vaelab.app import parsers
from vaelab.core.errors import Terminated, describe, on_sigterm
from vaelab.version import __version__


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # Python's default SIGTERM ends the process at once: a study's worker processes would train on as orphans.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main else None
    try:
        with warnings.catch_warnings():  # a warning is one line, as an error is (not Python's file:line and source)
            warnings.showwarning = _show_warning
            return _dispatch(args)
    finally:
        if previous is not None:  # None: not on the main thread, or a handler installed outside Python
            signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"vaelab: warning: {message}", file=file or sys.stderr)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        print(f"vaelab: interrupted; {_resume_hint(args)}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        if (line := describe(e)) is None:
            raise
        print(line, file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m vaelab.app.cli: the same as python -m vaelab
    sys.exit(main())

"""`python -m vaelab …` is the `vaelab` command (what torchrun runs: torchrun --nproc-per-node N -m vaelab train …)."""

import sys


def console() -> int:
    """The `vaelab` command: the CLI, imported here so that Ctrl-C while torch and friends load is one line."""
    try:
        from vaelab.app.cli import main
    except KeyboardInterrupt:
        print("vaelab: interrupted while starting; nothing was changed", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(console())

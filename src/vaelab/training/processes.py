"""One model trained on several processes of this machine: `launch` takes a config and starts them (torchrun's own
launcher, in-process); `main` is each process's entry, `python -m vaelab.training.processes CONFIG OUT`."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from vaelab.core.errors import Terminated, describe, on_sigterm
from vaelab.core.store import atomic_write_json, read_json
from vaelab.runs.config import TrainConfig, from_dict
from vaelab.training import distributed
from vaelab.training.budget import check_launch
from vaelab.training.loop import train


def launch(
    cfg: TrainConfig,
    out: str | Path,
    nproc: int,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    threads: int | None = None,
) -> None:
    """Train cfg into OUT on nproc processes (DistributedDataParallel), checked once first so that bad input is one
    line and no process; any process that fails ends all of them, and this raises one line naming it."""
    distributed.check_nproc(nproc, cfg.device)
    check_launch(cfg, Path(out), data_dir, resume)
    with tempfile.TemporaryDirectory(prefix="vaelab-launch-") as tmp:
        config = Path(tmp) / "config.json"  # read by every process as it starts; removed once all have ended
        atomic_write_json(config, cfg.to_dict())
        argv = ["-m", __name__, str(config), str(out)]
        argv += ["--resume"] if resume else []
        argv += ["--data-dir", str(data_dir)] if data_dir else []
        distributed.run_processes(argv, nproc, threads)


def _interrupt_once(signum, frame):
    """Ctrl-C reaches a process twice (the terminal, the launcher): it stops at the first and ignores the rest while
    it unwinds."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """One process of `launch`: its share of every batch. Errors are one line (exit 2), as the command's are; Ctrl-C
    and SIGTERM end it quietly (130, 143): the launcher reports them once, for all."""
    p = argparse.ArgumentParser(prog="python -m vaelab.training.processes")
    p.add_argument("config")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, _interrupt_once)
    try:
        cfg = from_dict(read_json(Path(args.config)))
        distributed.init(cfg.device)
        try:
            train(cfg, Path(args.out), data_dir=args.data_dir, resume=args.resume, progress=None)
        finally:
            distributed.finish()
    except KeyboardInterrupt as e:
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        line = describe(e)
        if line is None and isinstance(e, RuntimeError):  # a peer's death breaks this process's collectives
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            line = f"vaelab: error: process {distributed.from_env().rank}: {first}"
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

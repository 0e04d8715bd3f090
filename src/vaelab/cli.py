"""The `vaelab` command line: train, evaluate, sample, reconstruct, datasets (and the study and report tools)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

from . import data as vdata
from . import distributed, serve, study
from . import findings as vfindings
from .checkpoint import check_fits, convert_legacy, resolve_device
from .config import HELP, PRESETS, TrainConfig, from_dict, preset, upgrade
from .data import status
from .data.folder import with_options
from .errors import Terminated, VaelabError
from .evaluate import evaluate, evaluate_snapshots
from .explorer import Explorer
from .export import export, is_export, load, unpack
from .generate import Sampler
from .latent import explore
from .metrics import METRICS
from .onnx_export import export_onnx
from .plots import image_grid, save_image
from .report import render
from .run import Reproduction, Run, Study
from .scoring import score_run
from .store import (
    CONFIG,
    check_regular_target,
    check_run_dir,
    ensure_writable_dir,
    read_json_object,
)
from .study import reproduce as vreproduce
from .study import score_target
from .study.analysis import analyze
from .train import check_launch, load_checkpoint, train
from .version import __version__


class Parser(argparse.ArgumentParser):
    """argparse that reports bad usage on one line (exit 2), not a usage block."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _fmt(d: dict) -> str:
    """The summary metrics of an evaluation on one line, each as its registry entry formats it."""
    shown = [m for m in METRICS.values() if (m.summary or m.per_image is not None) and m.name in d]
    return "  ".join(f"{m.name}={m.format(d[m.name])}" for m in shown)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config fields (override the preset)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        text = (f"{HELP[f.name]} (default {f.default!r})" if f.default != "" else HELP[f.name]).replace("%", "%%")
        if isinstance(f.default, bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "time_budget":  # durations may carry a unit
            g.add_argument(flag, dest=f.name, default=None, metavar="DURATION", help=text)
        else:
            kind = type(f.default)
            g.add_argument(flag, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(), help=text)


def _config_overrides(args) -> dict:
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}


def _train_config(args, out: Path) -> TrainConfig:
    """The run's config: the stored one when resuming, else the preset, --config and the flags, in that order."""
    overrides = upgrade({**_config_overrides(args), **({"arch": args.arch} if args.arch else {})})
    if args.resume and not Run(out, check=False).holds_run():
        raise VaelabError(
            f"{out}: holds no run to resume (no {CONFIG} or checkpoint there); check the path, or "
            "leave out --resume to start a new run"
        )
    if args.resume and Run(out, check=False).config_path.is_file():
        cfg = from_dict({**read_json_object(Run(out).config_path, "a run config"), **overrides})
    else:
        base = preset(args.preset).to_dict()
        if args.config:
            base.update(read_json_object(Path(args.config), "a JSON object of config fields"))
        cfg = from_dict({**base, **overrides})
    if args.image_size is not None or args.image_mode or args.skip_bad_images:
        cfg = cfg.replace(dataset=with_options(cfg.dataset, args.image_size, args.image_mode, args.skip_bad_images))
    return cfg


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_train(args) -> int:
    out = Path(args.out)
    cfg = _train_config(args, out)
    if args.nproc < 1:
        raise VaelabError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.from_env().on:
        distributed.check_nproc(args.nproc, cfg.device)
    if args.nproc > 1 and not distributed.from_env().on:  # launch N processes here, as torchrun would
        check_launch(cfg, out, args.data_dir, args.resume)
        distributed.launch([*_without_nproc(args.argv), "--no-eval"], args.nproc)  # its rank 0 reports training
    else:
        d = distributed.init(cfg.device)
        try:
            last = train(cfg, out, data_dir=args.data_dir, resume=args.resume, progress=None)
        finally:
            distributed.finish()
        if not d.main:  # rank 0 reports and evaluates, once
            return 0
        _report_trained(cfg, out, last)
    if not args.no_eval:
        t0 = time.perf_counter()
        for fraction in evaluate_snapshots(out, data_dir=args.data_dir):
            print(f"snapshot at {fraction:g}: {_fmt(Run(out).snapshot_eval(fraction))}")
        result = evaluate(out, data_dir=args.data_dir)
        print(f"test: {_fmt(result)}  (evaluation {time.perf_counter() - t0:.0f} s)")
    return 0


def _report_trained(cfg: TrainConfig, out: Path, last: dict) -> None:
    val = f"val_neg_elbo={last['val_neg_elbo']:.4g}" if "val_neg_elbo" in last else "no validation set (val_size 0)"
    trained_s = sum(h["seconds"] for h in load_checkpoint(out)["history"])
    why = (
        f", stopped early (best epoch {last['best_epoch']})"
        if last.get("stopped_early")
        else ", time budget spent"
        if cfg.time_budget and trained_s >= cfg.time_budget
        else f", budget {cfg.budget} spent at step {last['step']}"
        if cfg.budget and last["epoch"] < cfg.epochs
        else ""
    )
    print(
        f"trained {out}: epoch {last['epoch']}{why}  {val}  images/s={last['images_per_s']:.0f}  "
        f"training {trained_s:.0f} s"
    )


def cmd_evaluate(args) -> int:
    result = evaluate(
        _run_arg(args.run),
        data_dir=args.data_dir,
        test_size=args.test_size,
        iwae_samples=args.iwae_samples,
        device=args.device,
        on=args.on,
        raw=args.raw,
        precision=args.precision,
        snapshot=args.snapshot,
    )
    print(
        json.dumps({k: v for k, v in result.items() if k not in ("kl_per_dim", "au_variance")}, indent=2)
        if args.json
        else f"{args.run}: {_fmt(result)}  (evaluation {result['eval_seconds']:.0f} s, IWAE K = "
        f"{result['iwae_samples']} in {result['iwae_precision']})"
    )
    return 0


def _out_png(args, run: Path, default: str) -> Path:
    path = Path(args.png) if args.png else run / default
    check_regular_target(path)
    ensure_writable_dir(path.parent)
    return path


def _check_count(name: str, value: int, most: int) -> None:
    if not 1 <= value <= most:
        raise VaelabError(f"{name} must be in 1..{most:,}, got {value}")


def cmd_sample(args) -> int:
    exported = is_export(args.run)  # a model file from `vaelab export`, or a run directory
    run = Path(args.run) if exported else check_run_dir(Path(args.run))
    _check_count("--n", args.n, 100_000)  # a grid image beyond this is no longer a picture anyone looks at
    _check_count("--nrow", args.nrow, 1000)
    if not 0 <= args.seed < 2**32:
        raise VaelabError(f"--seed must be in 0..2**32-1, got {args.seed}")
    dev = resolve_device(args.device or "auto")
    if exported:
        model = load(run, dev)
        ckpt = {"classes": model.classes}
    else:
        cfg, model, ckpt = Run(run).load(dev)
    check_fits(args.n * 4 * (model.n_outputs + 3 * model.n_dims), f"{args.n:,} samples", dev)
    k = None
    if args.class_name is not None:
        if args.class_name not in ckpt["classes"]:
            raise VaelabError(f"unknown class '{args.class_name}' (known: {', '.join(ckpt['classes'])})")
        k = ckpt["classes"].index(args.class_name)
    sampler = args.sampler or ("class-gaussian" if k is not None and not model.num_classes else "prior")
    gen = Sampler(model) if exported else Sampler.for_run(run, model, args.data_dir)  # a file has no training codes
    x = gen.images(args.n, sampler, k, args.seed, args.stochastic)
    path = save_image(
        image_grid(x, args.nrow),
        _out_png(args, run.parent if exported else run, f"{run.stem}-samples.png" if exported else "samples.png"),
    )
    print(path)
    return 0


def _target_arg(arg: str):
    """A study or run directory as given, or an exported model file unpacked into a run directory."""
    return _run_arg(arg) if is_export(arg) else arg


def _run_arg(arg: str) -> Path:
    """A run directory, or an exported model file (unpacked once into a run directory under the user cache)."""
    if is_export(arg):
        run = unpack(arg)
        print(f"{arg}: an exported model, unpacked to {run} (outputs go there)", file=sys.stderr)
        return run
    return check_run_dir(Path(arg))


def cmd_serve(args) -> int:
    if not 0 <= args.port <= 65535:
        raise VaelabError(f"--port must be in 0..65535 (0 picks a free one), got {args.port}")
    run = _run_arg(args.run)
    sock = serve.bind(args.host, args.port)  # first: a port that cannot be had is refused before any loading
    if not serve.loopback(sock):
        print(
            f"serve: warning: listening on {args.host}, beyond this machine: the API has no authentication, so "
            "anyone who can reach this address can use it and read the model's test images",
            file=sys.stderr,
        )
    explorer = Explorer.for_run(run, args.data_dir)
    if explorer.mu is None:
        print("serve: the dataset is not here: test images, the map, the GMM and arithmetic are off", file=sys.stderr)
    print(f"vaelab serve: {serve.address(sock)} (Ctrl-C stops it)", flush=True)
    with sock:
        try:
            serve.server(explorer, sock, f"vaelab explorer: {Path(args.run).name}").run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then re-raises it: the way to stop, not an error
            pass
    print("vaelab serve: stopped", file=sys.stderr)
    return 0


def cmd_explore(args) -> int:
    run = _run_arg(args.run)
    figs, measures = explore(run, data_dir=args.data_dir)
    if not args.no_classifier:
        scores = score_run(run, data_dir=args.data_dir, n=args.samples, reuse=False)
        measures.update({k: v for k, v in scores.items() if not k.startswith("class_histogram")})
        for k in ("prior", "gmm"):
            print(f"class histogram of samples ({k}): " + " ".join(f"{p:.2f}" for p in scores[f"class_histogram_{k}"]))
    for name, caption in figs:
        print(f"{run / 'explore' / name}: {caption}")
    print(
        "latent organisation: "
        + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in measures.items())
    )
    return 0


def cmd_reconstruct(args) -> int:
    run = _run_arg(args.run)
    _check_count("--n", args.n, 10_000)
    dev = resolve_device(args.device or "auto")
    cfg, model, _ = Run(run).load(dev)
    ds = vdata.load(cfg.dataset, args.data_dir)
    idx = vdata.test_indices(len(ds.x_test), args.n)
    x = torch.from_numpy(ds.x_test[idx]).to(dev)
    y = torch.from_numpy(ds.y_test[idx]).to(dev) if model.num_classes else None
    x_hat = model.reconstruct(x, y)
    both = torch.cat([vdata.to_float(x), x_hat])  # originals on the top row(s), reconstructions below
    path = save_image(image_grid(both, args.n), _out_png(args, run, "reconstructions.png"))
    print(path)
    return 0


def cmd_datasets(args) -> int:
    rows = status(args.data_dir)
    w = max(len(r["dataset"]) for r in rows)
    for r in rows:
        print(
            f"{r['dataset']:<{w}}  {r['shape']:<8}  {r['status']:<10}  {r['where']}"
            + (f"  ({r['why']})" if r["why"] else "")
        )
    return 0


def cmd_study(args) -> int:
    if args.target[:1] == ["status"]:
        if len(args.target) != 2:
            raise VaelabError("usage: vaelab study status STUDY_DIR")
        out = Path(args.target[1])
        if not Study(out).exists():
            raise VaelabError(f"{out}: not a study directory (no study.json)")
        text, counts = study.status_text(out)
        print(text)
        return 1 if counts.get("failed") else 0
    if bool(args.target) == bool(args.preset):
        raise VaelabError("give a spec file or --preset NAME (not both)")
    if len(args.target) > 1:
        raise VaelabError(f"one spec file at a time, got {len(args.target)}")
    if not args.out:
        raise VaelabError("--out STUDY_DIR is required")
    spec = study.load_spec(args.target[0]) if args.target else study.preset_spec(args.preset)
    t0 = time.perf_counter()
    counts = study.run(
        spec,
        args.out,
        jobs=args.jobs,
        executor=args.executor,
        address=args.address,
        data_dir=args.data_dir,
        retrain_stale=args.retrain_stale,
        gpus_per_run=args.gpus_per_run,
        threads=args.threads,
        together=args.together,
        nproc_per_run=args.nproc_per_run,
    )
    wall = time.perf_counter() - t0
    print(
        f"study {spec.name}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f" of {len(spec.cells)} runs in {wall:.0f}s; results in {Path(args.out) / 'results.csv'}"
    )
    if counts.get("failed"):
        rid, why = study.first_failure(args.out)
        print(f"first failure: {rid}: {why} (all of them: vaelab study status {args.out})", file=sys.stderr)
        return 1
    return 0


def cmd_score(args) -> int:
    if not 1 <= args.samples <= 100_000:
        raise VaelabError(f"--samples must be in 1..100,000, got {args.samples}")
    target = _target_arg(args.target)
    for label, s in score_target(target, args.data_dir, args.samples, every=args.all):
        print(
            f"{label}: "
            + (
                s
                if isinstance(s, str)
                else f"conditional accuracy {s['conditional_accuracy']:.1%}, "
                f"Fréchet distance p(z) {s['fd_prior']:.3g}, GMM {s['fd_gmm']:.3g}"
            )
        )
    return 0


def cmd_export(args) -> int:
    run, path = check_run_dir(Path(args.run)), Path(args.file)
    if path.suffix == ".onnx":
        for p in export_onnx(run, path, force=args.force):
            print(p)
        return 0
    print(export(run, path, force=args.force))
    return 0


def cmd_convert(args) -> int:
    path = convert_legacy(check_run_dir(Path(args.run)), trust=args.i_trust_this_file)
    print(f"converted: {path} (the old checkpoint.pt is kept; delete it once you no longer need it)")
    return 0


def cmd_report(args) -> int:
    target = _target_arg(args.target)
    if not args.render_only:
        analyze(target, data_dir=args.data_dir, classifier=not args.no_classifier)
    path = render(target)
    print(f"report written: {path}  (and {path.parent / 'summary.md'})")
    return 0


def cmd_findings(args) -> int:
    path = Path(args.results)
    if path.is_dir():
        path = Study(path).results_path
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise VaelabError(f"{path}: cannot read a results table ({e})") from None
    df = study.check_table(df, path)
    along = study.read_fractions(path.parent) if path.name == Study(path.parent).results_path.name else None
    testable, untestable = study.study_findings(df, along)
    for f in testable:
        trace = f" (along training: {vfindings.along_text(f)})" if f.along else ""
        print(f"- **{f.claim}** — *{f.verdict}*{trace}: {f.evidence}")
    if untestable:
        print("\n" + vfindings.untestable_text(untestable))
    return 0


def cmd_reproduce(args) -> int:
    if args.list:
        for r in vreproduce.list_rows():
            print(f"{r['id']:<26}  {r['published']:6.2f}  {r['metric']}  {r['dataset']}  {r['model']}  {r['source']}")
        return 0
    if args.ledger:
        if args.write:
            print(f"ledger written: {vreproduce.write_ledger(args.ledger, args.write)}")
        else:
            print(vreproduce.ledger_markdown(args.ledger), end="")
        return 0
    if not args.row:
        raise VaelabError("name a row (vaelab reproduce --list shows them), or pass --list or --ledger DIR")
    out = Path(args.out or f"reproductions/{args.row}")
    result = vreproduce.reproduce(args.row, out, args.seeds, args.budget or "", args.k, args.data_dir, jobs=args.jobs)
    print(
        f"{result['id']}: {result['mean']:.2f} ± {result['sd']:.2f} nats over {len(result['measured'])} seeds "
        f"(published {result['published']:.2f}, gap {result['gap']:+.2f}, tolerance {result['tolerance']:g}"
        + (", reduced budget: not comparable" if result["reduced"] else f", within: {result['within']}")
        + f"); {Reproduction(out).result_path}"
    )
    return 0


def cmd_analyze(args) -> int:
    target = _target_arg(args.target)
    path = analyze(target, data_dir=args.data_dir, classifier=not args.no_classifier)
    print(
        f"analysis written: {path} (figures in {path.parent / 'fig'}); render it with: vaelab report {args.target} "
        "--render-only"
    )
    return 0


EXAMPLES = {
    "train": "examples:\n  vaelab train --dataset fashion-mnist --latent-dim 16 --beta 1 --epochs 20 --train-size 2000 --out runs/fm16\n"
    "  vaelab train --preset cifar10 --epochs 30 --out runs/c128\n  vaelab train --resume --out runs/fm16",
    "evaluate": "examples:\n  vaelab evaluate runs/fm16\n  vaelab evaluate runs/fm16 --test-size 1000 --iwae-samples 10 --json\n"
    "  vaelab evaluate runs/c128 --on cifar10-lossless",
    "sample": "examples:\n  vaelab sample runs/fm16 --n 64 --png samples.png\n"
    "  vaelab sample runs/fm16 --class Sneaker      (per-class Gaussian on the run's codes)\n"
    "  vaelab sample runs/fm16 --sampler gmm        (GMM on the aggregate posterior)\n"
    "  vaelab sample runs/cvae --class 'Ankle boot' (a --conditional run)",
    "explore": "examples:\n  vaelab explore runs/fm16",
    "serve": "examples:\n  vaelab serve runs/fm16                      (open the address it prints)\n"
    "  vaelab serve fm16.safetensors --data-dir ~/data\n  vaelab serve runs/fm16 --host 0.0.0.0 --port 8080",
    "reconstruct": "examples:\n  vaelab reconstruct runs/fm16 --n 16",
    "study": "examples:\n  vaelab study --preset quick --out studies/quick --jobs 2\n  vaelab study tiny.toml --out studies/tiny\n"
    "  vaelab study --preset seed --out studies/seed --executor ray --address auto\n"
    "  vaelab study status studies/quick\n\nexit code 1 when some runs failed (see status), 2 on bad input.",
    "findings": "examples:\n  vaelab findings docs/studies/standard/results.csv\n  vaelab findings studies/quick",
    "analyze": "examples:\n  vaelab analyze studies/quick && vaelab report studies/quick --render-only",
    "report": "examples:\n  vaelab score studies/quick && vaelab report studies/quick\n  vaelab report runs/fm16",
    "export": "examples:\n  vaelab export runs/fm16 fm16.safetensors\n  vaelab sample fm16.safetensors --n 16\n"
    "  vaelab export runs/fm16 fm16.onnx    # fm16.encoder.onnx and fm16.decoder.onnx",
    "score": "examples:\n  vaelab score studies/quick\n  vaelab score runs/fm16 --samples 5000",
    "datasets": "examples:\n  vaelab datasets\n  vaelab datasets --data-dir ../shared/data",
    "convert": "examples:\n  vaelab convert runs/old --i-trust-this-file\n\nvaelab 0.1 stored checkpoints as pickles, "
    "which run code when loaded;\nthis rewrites one as checkpoint.safetensors (tensors and JSON only).",
}


def _parser_train(add, data_arg: dict) -> None:
    t = add("train", "Train a VAE into a run directory (then evaluate it on the test set).")
    t.add_argument("--out", required=True, help="run directory to create (or continue, with --resume)")
    t.add_argument(
        "--preset", default="fashion-mnist", choices=sorted(PRESETS), help="base config (default fashion-mnist)"
    )
    t.add_argument("--config", help="JSON file of config fields, applied over the preset")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    t.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation after training")
    t.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes of this machine (DistributedDataParallel, as torchrun --nproc-per-node N; "
        "the same global batch, so the same model within float rounding); default 1",
    )
    t.add_argument("--data-dir", **data_arg)
    t.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="N",
        help="folder:PATH datasets: resize (shorter side) and centre-crop to N x N (a multiple of 4; "
        "default the images' median size); same as folder:PATH?size=N",
    )
    t.add_argument(
        "--image-mode",
        choices=["auto", "grey", "rgb"],
        default=None,
        help="folder:PATH datasets: force grey or colour (default auto: grey when every image is)",
    )
    t.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="folder:PATH datasets: leave out files that do not decode (default: the first is an error)",
    )
    t.add_argument(
        "--arch",
        default=None,
        metavar="NAME",
        help="vaelab 0.1's flag: a network (same as --net NAME) or hierarchical (same as --model hierarchical)",
    )
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)


def _parser_evaluate(add, data_arg: dict) -> None:
    e = add("evaluate", "Evaluate a trained run on the test set; writes RUN/eval.json.")
    e.add_argument("run", help="a run directory or an exported model file")
    e.add_argument(
        "--test-size", type=int, default=None, help="subsample N test images (default: the run's config, 0 = all)"
    )
    e.add_argument(
        "--iwae-samples", type=int, default=None, help="importance samples K for the IWAE bound (default: config)"
    )
    e.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to compute (default auto: cuda when there is one)",
    )
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument(
        "--on",
        metavar="DATASET",
        help="test on another dataset of the same shape "
        "(e.g. cifar10-lossless: real CIFAR-10 pixels); writes RUN/eval-DATASET.json",
    )
    e.add_argument(
        "--raw",
        action="store_true",
        help="evaluate the raw latest weights of a run trained with --ema "
        "or --patience (not its EMA / best epoch); writes RUN/eval[-DATASET]-raw.json",
    )
    e.add_argument(
        "--snapshot",
        type=float,
        metavar="FRACTION",
        default=None,
        help="evaluate the model kept at this fraction of the budget (train --snapshots); "
        "writes RUN/snapshots/eval-at-FRACTION.json",
    )
    e.add_argument(
        "--precision",
        choices=["auto", "bf16", "fp32"],
        default="fp32",
        help="the IWAE's decoder passes: fp32 (default); bf16 = bf16 autocast with the output layer and "
        "likelihood in fp32 (1.4x faster on this CPU, shifts the bound by a few Monte-Carlo standard "
        "errors: for quick looks); auto = bf16 where the device computes it natively",
    )
    e.add_argument("--data-dir", **data_arg)
    e.set_defaults(func=cmd_evaluate)


def _parser_sample(add, data_arg: dict) -> None:
    s = add("sample", "Decode samples from the prior into a PNG grid (RUN/samples.png by default).")
    s.add_argument("run", help="a run directory or an exported model file")
    s.add_argument("--n", type=int, default=64, help="samples to draw (default 64)")
    s.add_argument("--nrow", type=int, default=8, help="images per row of the grid (default 8)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draws: the same seed gives the same images")
    s.add_argument("--stochastic", action="store_true", help="draw pixels from p(x|z) instead of showing its mean")
    s.add_argument("--png", help="output PNG path")
    s.add_argument(
        "--class",
        dest="class_name",
        metavar="NAME",
        help="generate this class (a CVAE run, or the per-class Gaussian fitted to an ordinary run's codes)",
    )
    s.add_argument(
        "--sampler",
        choices=["prior", "gmm", "class-gaussian"],
        default=None,
        help="where z comes from: the model's prior p(z) (default), a GMM on the aggregate posterior, "
        "or a class's Gaussian",
    )
    s.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to compute (default auto: cuda when there is one)",
    )
    s.add_argument("--data-dir", **data_arg)
    s.set_defaults(func=cmd_sample)


def _parser_explore(add, data_arg: dict) -> None:
    x = add("explore", "Latent exploration and conditional generation: figures in RUN/explore/ and latent measures.")
    x.add_argument("run", help="a run directory or an exported model file")
    x.add_argument("--samples", type=int, default=2000, help="samples scored by the reference classifier")
    x.add_argument(
        "--no-classifier",
        action="store_true",
        help="skip the reference classifier's scores (its first use trains it: minutes on a CPU)",
    )
    x.add_argument("--data-dir", **data_arg)
    x.set_defaults(func=cmd_explore)


def _parser_reconstruct(add, data_arg: dict) -> None:
    r = add("reconstruct", "Save test originals (top) and their reconstructions (bottom) as a PNG.")
    r.add_argument("run", help="a run directory or an exported model file")
    r.add_argument("--n", type=int, default=16, help="number of test images")
    r.add_argument("--png", help="output PNG path")
    r.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default=None,
        help="where to compute (default auto: cuda when there is one)",
    )
    r.add_argument("--data-dir", **data_arg)
    r.set_defaults(func=cmd_reconstruct)


def _parser_study(add, data_arg: dict) -> None:
    st = add("study", "Run or resume a comparative study (a grid of runs), or show its status.")
    st.add_argument(
        "target",
        nargs="*",
        metavar="SPEC | status STUDY",
        help="a .toml/.yaml/.json study spec, or 'status' and a study directory",
    )
    st.add_argument(
        "--preset",
        help="a built-in study: quick (minutes on a laptop), standard (the study's span in two hours on "
        "2 cores), seed (the full study, 40 epochs a run), families (posteriors, priors, "
        "objectives), architectures (conv, resnet, hierarchical) or disentangle "
        "(objectives on shapes2d-32)",
    )
    st.add_argument("--out", help="study directory (runs/, study.json, results.csv)")
    st.add_argument(
        "--together",
        action="store_true",
        help="train cells that differ only in seed and beta as one stacked model each (vmap: many small "
        "runs fill a GPU); same numbers as one by one, within float rounding",
    )
    st.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (processes)")
    st.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per run (default: the cores shared evenly among --jobs); e.g. --jobs 1 "
        "--threads 1 leaves a core free and gives every run the same compute",
    )
    st.add_argument(
        "--executor", choices=["local", "ray"], default="local", help="local processes (default) or a Ray cluster"
    )
    st.add_argument("--address", help="Ray cluster address for --executor ray (default auto; 'local' starts one)")
    st.add_argument(
        "--gpus-per-run",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs each run asks Ray for (e.g. 1, or 0.5 to pack two per GPU; default 0)",
    )
    st.add_argument(
        "--nproc-per-run",
        type=int,
        default=1,
        metavar="N",
        help="train each cell's model on N processes (DistributedDataParallel, as train --nproc); on Ray the cell "
        "reserves N CPUs (with GPUs, give --gpus-per-run N too); default 1",
    )
    st.add_argument(
        "--retrain-stale",
        action="store_true",
        help="when a run directory was trained with another config than its cell's, move it aside "
        "(runs/<id>.stale-N) and train the cell anew; without it that is an error",
    )
    st.add_argument("--data-dir", **data_arg)
    st.set_defaults(func=cmd_study)


def _parser_report(add, data_arg: dict) -> None:
    rp = add("report", "Write figures and an HTML report (report/index.html, summary.md) for a study or a run.")
    rp.add_argument("target", metavar="STUDY_OR_RUN", help="a study directory, a run directory or a model file")
    rp.add_argument("--data-dir", **data_arg)
    rp.add_argument(
        "--no-classifier",
        action="store_true",
        help="leave out the generation scores (which 'vaelab score' computes; the report only reads them)",
    )
    rp.add_argument(
        "--render-only",
        action="store_true",
        help="render report/page.json as 'vaelab analyze' left it (no analysis: no model, no data)",
    )
    rp.set_defaults(func=cmd_report)


def _parser_findings(add, data_arg: dict) -> None:
    fi = add(
        "findings",
        "Test the study's claims on a results.csv (a study directory's, or a committed one) and "
        "print them as Markdown: no runs, models or data needed.",
    )
    fi.add_argument("results", metavar="RESULTS_CSV_OR_STUDY", help="a results.csv, or a study directory holding one")
    fi.set_defaults(func=cmd_findings)


def _parser_analyze(add, data_arg: dict) -> None:
    an = add(
        "analyze",
        "Compute what a study's or a run's report shows (figures, tables, findings) into "
        "report/page.json and report/fig/, without rendering it.",
    )
    an.add_argument("target", metavar="STUDY_OR_RUN", help="a study directory, a run directory or a model file")
    an.add_argument("--data-dir", **data_arg)
    an.add_argument("--no-classifier", action="store_true", help="leave out the generation scores")
    an.set_defaults(func=cmd_analyze)


def _parser_serve(add, data_arg: dict) -> None:
    sv = add(
        "serve",
        "Explore a model's latent space in the browser: one slider per latent dimension (by KL), test images' "
        "codes, samples from the prior, the aggregate posterior or a class, interpolation and latent arithmetic "
        "(needs vaelab[serve]).",
    )
    sv.add_argument("run", help="a run directory or an exported model file")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    sv.add_argument("--data-dir", **data_arg)
    sv.set_defaults(func=cmd_serve)


def _parser_datasets(add, data_arg: dict) -> None:
    d = add("datasets", "Show each dataset's status and where it was found.")
    d.add_argument("--data-dir", **data_arg)
    d.set_defaults(func=cmd_datasets)


def _parser_export(add, data_arg: dict) -> None:
    ex = add(
        "export",
        "Write a run's model to one shareable .safetensors file (weights, config, dataset facts; no "
        "pickle), which vaelab.load(FILE) and vaelab sample FILE read; or, for NAME.onnx, its encoder and decoder "
        "as NAME.encoder.onnx and NAME.decoder.onnx for onnxruntime and other runtimes (needs vaelab[onnx]).",
    )
    ex.add_argument("run", help="the run directory to export")
    ex.add_argument("file", metavar="FILE.safetensors|NAME.onnx", help="the model file to write")
    ex.add_argument("--force", action="store_true", help="replace the file(s) if they exist")
    ex.set_defaults(func=cmd_export)


def _parser_score(add, data_arg: dict) -> None:
    sc = add(
        "score",
        "Score generation with the reference classifier (conditional accuracy, Fréchet distance in its "
        "features) for a run, or for the runs a study's report shows; stored in their eval.json.",
    )
    sc.add_argument("target", metavar="STUDY_OR_RUN", help="a study directory, a run directory or a model file")
    sc.add_argument("--samples", type=int, default=2000, help="samples per sampler (default 2000)")
    sc.add_argument(
        "--all",
        action="store_true",
        help="score every finished run of a study (e.g. to compare families or architectures), not only the report's",
    )
    sc.add_argument("--data-dir", **data_arg)
    sc.set_defaults(func=cmd_score)


def _parser_reproduce(add, data_arg: dict) -> None:
    r = add(
        "reproduce",
        "Train and score a published VAE likelihood (a row of the literature's tables) over seeds, resumably, into "
        "DIR/reproduction.json beside the published value; --list shows the rows, --ledger DIR the table of a "
        "folder of such files.",
    )
    r.add_argument("row", nargs="?", help="the row's id (vaelab reproduce --list)")
    r.add_argument("--list", action="store_true", help="list the published rows and exit")
    r.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    r.add_argument("--jobs", type=int, default=1, help="seeds trained at once, in as many processes (default 1)")
    r.add_argument(
        "--budget", default=None, help="a reduced training budget (e.g. 2e6images, 50000steps); recorded as reduced"
    )
    r.add_argument("--k", type=int, default=None, help="importance samples of the test NLL (default: the paper's)")
    r.add_argument("--out", default=None, help="the reproduction's directory (default reproductions/ROW)")
    r.add_argument("--ledger", metavar="DIR", default=None, help="print the ledger table of DIR/*.json")
    r.add_argument(
        "--write", metavar="FILE", default=None, help="with --ledger: put the table into FILE (between its markers)"
    )
    r.add_argument("--data-dir", **data_arg)
    r.set_defaults(func=cmd_reproduce)


def _parser_convert(add, data_arg: dict) -> None:
    c = add("convert", "Convert a vaelab 0.1 run's pickle checkpoint to the safe format (only if you trust it).")
    c.add_argument("run", help="the vaelab 0.1 run directory holding checkpoint.pt")
    c.add_argument(
        "--i-trust-this-file",
        action="store_true",
        help="required: converting unpickles the old file, which runs any code it holds",
    )
    c.set_defaults(func=cmd_convert)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vaelab",
        description="Train, evaluate and compare Variational Autoencoders on image data.",
        epilog="Run 'vaelab COMMAND --help' for each command's options and examples.",
    )
    p.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name, help_):
        return sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    data_arg = dict(
        default=None, help="folder holding the datasets (default: $VAELAB_DATA, the user cache, /usr/share/datasets)"
    )
    _parser_train(add, data_arg)
    _parser_evaluate(add, data_arg)
    _parser_sample(add, data_arg)
    _parser_explore(add, data_arg)
    _parser_reconstruct(add, data_arg)
    _parser_study(add, data_arg)
    _parser_report(add, data_arg)
    _parser_analyze(add, data_arg)
    _parser_findings(add, data_arg)
    _parser_datasets(add, data_arg)
    _parser_export(add, data_arg)
    _parser_serve(add, data_arg)
    _parser_score(add, data_arg)
    _parser_reproduce(add, data_arg)
    _parser_convert(add, data_arg)
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


if __name__ == "__main__":
    sys.exit(main())

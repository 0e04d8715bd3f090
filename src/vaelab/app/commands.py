"""What each `vaelab` command does: the cmd_* functions the parsers dispatch to, and their argument checks."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

from vaelab import data as vdata
from vaelab import study
from vaelab.app import serve
from vaelab.core.device import check_fits, resolve_device
from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    CONFIG,
    atomic_write_text,
    check_regular_target,
    check_run_dir,
    ensure_writable_dir,
    read_json_object,
)
from vaelab.data import status
from vaelab.data.folder import with_options
from vaelab.evaluation.evaluate import evaluate, evaluate_snapshots
from vaelab.evaluation.generate import Sampler
from vaelab.evaluation.metrics import METRICS
from vaelab.evaluation.scoring import score_run
from vaelab.exploration.explorer import Explorer
from vaelab.exploration.latent import explore
from vaelab.exploration.plots import forest as forest_plot
from vaelab.exploration.plots import image_grid, save_fig, save_image
from vaelab.exports.bundle import export, is_export, load, unpack
from vaelab.exports.onnx import export_onnx
from vaelab.report import render
from vaelab.runs.checkpoint import convert_legacy, load_checkpoint
from vaelab.runs.config import TrainConfig, from_dict, upgrade
from vaelab.runs.presets import preset
from vaelab.runs.run import Run
from vaelab.study import analysis, score_target, verdicts
from vaelab.study import reproduce as vreproduce
from vaelab.study.analysis import analyze
from vaelab.study.folders import Reproduction, Study
from vaelab.training import distributed, processes
from vaelab.training.loop import train


def _fmt(d: dict) -> str:
    """The summary metrics of an evaluation on one line, each as its registry entry formats it."""
    shown = [m for m in METRICS.values() if (m.summary or m.per_image is not None) and m.name in d]
    return "  ".join(f"{m.name}={m.format(d[m.name])}" for m in shown)


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


def cmd_train(args) -> int:
    out = Path(args.out)
    cfg = _train_config(args, out)
    if args.nproc < 1:
        raise VaelabError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.from_env().on:  # launch N processes here, as torchrun would
        processes.launch(cfg, out, args.nproc, data_dir=args.data_dir, resume=args.resume)
        _report_trained(cfg, out)  # the processes trained it: the checkpoint's last row
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


def _report_trained(cfg: TrainConfig, out: Path, last: dict | None = None) -> None:
    history = load_checkpoint(out)["history"]
    last = history[-1] if last is None else last
    val = f"val_neg_elbo={last['val_neg_elbo']:.4g}" if "val_neg_elbo" in last else "no validation set (val_size 0)"
    trained_s = sum(h["seconds"] for h in history)
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


def report(target: str | Path, data_dir=None, classifier: bool = True) -> Path:
    """The analysis (vaelab.study.analysis.analyze), then the rendering (vaelab.report.render): what `vaelab report`
    does. Here, above both, so that the renderer imports no analysis."""
    analyze(target, data_dir, classifier)
    return render(target)


def cmd_report(args) -> int:
    target = _target_arg(args.target)
    if args.render_only:
        path = render(target)
    else:
        path = report(target, data_dir=args.data_dir, classifier=not args.no_classifier)
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
    forest = Path(args.forest) if args.forest else None
    if forest is not None and (forest.suffix.lower() != ".png" or not forest.parent.is_dir()):
        raise VaelabError(f"--forest {forest}: needs a .png file in an existing folder")
    testable, untestable = study.study_findings(df, along)
    bullets = []
    for f in testable:
        trace = f" (along training: {verdicts.along_text(f)})" if f.along else ""
        moved = f" ({verdicts.convergence_text(f)})" if verdicts.convergence_text(f) else ""
        bullets.append(f"- **{f.claim}** — *{f.verdict}*{trace}{moved}: {f.evidence}")
    tail = ("\n\n" + verdicts.untestable_text(untestable)) if untestable else ""
    glance = verdicts.glance_markdown(testable)
    print("## At a glance\n\n" + glance + "\n\n## Findings\n\n" + "\n".join(bullets) + tail)
    points = verdicts.forest_points(testable)
    if forest is not None:
        save_fig(forest_plot(points), forest)
    if args.summary:
        _refresh_summary(Path(args.summary), glance, "\n".join(bullets) + tail, points)
    return 0


def _refresh_summary(path: Path, glance: str, findings: str, points: list) -> None:
    """Replace the Findings section of a study's summary.md with these findings (for committed studies whose runs
    are not here to re-render the report), the forest plot beside it in fig/."""
    text = path.read_text() if path.is_file() else ""
    if "\n## Findings\n" not in text:
        raise VaelabError(f"--summary {path}: not a study summary.md (no '## Findings' section)")
    head, rest = text.split("\n## Findings\n", 1)
    after = rest[rest.index("\n## ") :] if "\n## " in rest else "\n"
    fig = ""
    if points:
        save_fig(forest_plot(points), path.parent / "fig" / "findings_forest.png")
        fig = "![effects against their ±δ bands](fig/findings_forest.png)\n\n"
    along = "'Along training' is the verdict on the models kept at earlier fractions of the budget (IWAE-based claims only where those were scored at the same K)."
    body = f"{analysis.FINDINGS_INTRO}\n\n{along}\n\n{glance}\n\n{fig}{findings}\n"
    atomic_write_text(path, f"{head}\n## Findings\n{body}{after}")


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

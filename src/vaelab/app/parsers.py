"""The `vaelab` commands' parsers: options, help and examples of each command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields

from vaelab.app import commands
from vaelab.runs.config import HELP, TrainConfig
from vaelab.runs.presets import PRESETS


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


def opt(*flags: str, **kwargs) -> tuple:
    """One option of a command: argparse's add_argument arguments."""
    return flags, kwargs


# options several commands share, written once
DATA_DIR = opt(
    "--data-dir",
    default=None,
    help="folder holding the datasets (default: $VAELAB_DATA, the user cache, /usr/share/datasets)",
)
RUN = opt("run", help="a run directory or an exported model file")
TARGET = opt("target", metavar="STUDY_OR_RUN", help="a study directory, a run directory or a model file")
PNG = opt("--png", help="output PNG path")
DEVICE = opt(
    "--device",
    choices=["auto", "cpu", "cuda"],
    default=None,
    help="where to compute (default auto: cuda when there is one)",
)


@dataclass(frozen=True)
class Command:
    """One `vaelab` command: its help line, the function it runs, its options in order, whether every TrainConfig
    field is also a flag, and its examples."""

    help: str
    func: Callable
    options: tuple
    config_flags: bool = False
    examples: str | None = None


COMMANDS = {
    "train": Command(
        "Train a VAE into a run directory (then evaluate it on the test set).",
        commands.cmd_train,
        (
            opt("--out", required=True, help="run directory to create (or continue, with --resume)"),
            opt(
                "--preset", default="fashion-mnist", choices=sorted(PRESETS), help="base config (default fashion-mnist)"
            ),
            opt("--config", help="JSON file of config fields, applied over the preset"),
            opt("--resume", action="store_true", help="continue the interrupted run in --out"),
            opt("--no-eval", action="store_true", help="skip the test-set evaluation after training"),
            opt(
                "--nproc",
                type=int,
                default=1,
                metavar="N",
                help="train on N processes of this machine (DistributedDataParallel, as torchrun --nproc-per-node N; "
                "the same global batch, so the same model within float rounding); default 1",
            ),
            DATA_DIR,
            opt(
                "--image-size",
                type=int,
                default=None,
                metavar="N",
                help="folder:PATH datasets: resize (shorter side) and centre-crop to N x N (a multiple of 4; "
                "default the images' median size); same as folder:PATH?size=N",
            ),
            opt(
                "--image-mode",
                choices=["auto", "grey", "rgb"],
                default=None,
                help="folder:PATH datasets: force grey or colour (default auto: grey when every image is)",
            ),
            opt(
                "--skip-bad-images",
                action="store_true",
                help="folder:PATH datasets: leave out files that do not decode (default: the first is an error)",
            ),
            opt(
                "--arch",
                default=None,
                metavar="NAME",
                help="vaelab 0.1's flag: a network (same as --net NAME) or hierarchical (same as --model hierarchical)",
            ),
        ),
        config_flags=True,
        examples=EXAMPLES.get("train"),
    ),
    "evaluate": Command(
        "Evaluate a trained run on the test set; writes RUN/eval.json.",
        commands.cmd_evaluate,
        (
            RUN,
            opt(
                "--test-size",
                type=int,
                default=None,
                help="subsample N test images (default: the run's config, 0 = all)",
            ),
            opt(
                "--iwae-samples",
                type=int,
                default=None,
                help="importance samples K for the IWAE bound (default: config)",
            ),
            DEVICE,
            opt("--json", action="store_true", help="print the metrics as JSON"),
            opt(
                "--on",
                metavar="DATASET",
                help="test on another dataset of the same shape "
                "(e.g. cifar10-lossless: real CIFAR-10 pixels); writes RUN/eval-DATASET.json",
            ),
            opt(
                "--raw",
                action="store_true",
                help="evaluate the raw latest weights of a run trained with --ema "
                "or --patience (not its EMA / best epoch); writes RUN/eval[-DATASET]-raw.json",
            ),
            opt(
                "--snapshot",
                type=float,
                metavar="FRACTION",
                default=None,
                help="evaluate the model kept at this fraction of the budget (train --snapshots); "
                "writes RUN/snapshots/eval-at-FRACTION.json",
            ),
            opt(
                "--precision",
                choices=["auto", "bf16", "fp32"],
                default="fp32",
                help="the IWAE's decoder passes: fp32 (default); bf16 = bf16 autocast with the output layer and "
                "likelihood in fp32 (1.4x faster on this CPU, shifts the bound by a few Monte-Carlo standard "
                "errors: for quick looks); auto = bf16 where the device computes it natively",
            ),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("evaluate"),
    ),
    "sample": Command(
        "Decode samples from the prior into a PNG grid (RUN/samples.png by default).",
        commands.cmd_sample,
        (
            RUN,
            opt("--n", type=int, default=64, help="samples to draw (default 64)"),
            opt("--nrow", type=int, default=8, help="images per row of the grid (default 8)"),
            opt("--seed", type=int, default=0, help="seed of the draws: the same seed gives the same images"),
            opt("--stochastic", action="store_true", help="draw pixels from p(x|z) instead of showing its mean"),
            PNG,
            opt(
                "--class",
                dest="class_name",
                metavar="NAME",
                help="generate this class (a CVAE run, or the per-class Gaussian fitted to an ordinary run's codes)",
            ),
            opt(
                "--sampler",
                choices=["prior", "gmm", "class-gaussian"],
                default=None,
                help="where z comes from: the model's prior p(z) (default), a GMM on the aggregate posterior, "
                "or a class's Gaussian",
            ),
            DEVICE,
            DATA_DIR,
        ),
        examples=EXAMPLES.get("sample"),
    ),
    "explore": Command(
        "Latent exploration and conditional generation: figures in RUN/explore/ and latent measures.",
        commands.cmd_explore,
        (
            RUN,
            opt("--samples", type=int, default=2000, help="samples scored by the reference classifier"),
            opt(
                "--no-classifier",
                action="store_true",
                help="skip the reference classifier's scores (its first use trains it: minutes on a CPU)",
            ),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("explore"),
    ),
    "reconstruct": Command(
        "Save test originals (top) and their reconstructions (bottom) as a PNG.",
        commands.cmd_reconstruct,
        (
            RUN,
            opt("--n", type=int, default=16, help="number of test images"),
            PNG,
            DEVICE,
            DATA_DIR,
        ),
        examples=EXAMPLES.get("reconstruct"),
    ),
    "study": Command(
        "Run or resume a comparative study (a grid of runs), or show its status.",
        commands.cmd_study,
        (
            opt(
                "target",
                nargs="*",
                metavar="SPEC | status STUDY",
                help="a .toml/.yaml/.json study spec, or 'status' and a study directory",
            ),
            opt(
                "--preset",
                help="a built-in study: quick (minutes on a laptop), standard (the study's span in two hours on "
                "2 cores), seed (the full study, 40 epochs a run), families (posteriors, priors, "
                "objectives), architectures (conv, resnet, hierarchical) or disentangle "
                "(objectives on shapes2d-32)",
            ),
            opt("--out", help="study directory (runs/, study.json, results.csv)"),
            opt(
                "--together",
                action="store_true",
                help="train cells that differ only in seed and beta as one stacked model each (vmap: many small "
                "runs fill a GPU); same numbers as one by one, within float rounding",
            ),
            opt("--jobs", type=int, default=1, help="runs at once on this machine (processes)"),
            opt(
                "--threads",
                type=int,
                default=None,
                help="CPU threads per run (default: the cores shared evenly among --jobs); e.g. --jobs 1 "
                "--threads 1 leaves a core free and gives every run the same compute",
            ),
            opt(
                "--executor",
                choices=["local", "ray"],
                default="local",
                help="local processes (default) or a Ray cluster",
            ),
            opt("--address", help="Ray cluster address for --executor ray (default auto; 'local' starts one)"),
            opt(
                "--gpus-per-run",
                type=float,
                default=0.0,
                metavar="G",
                help="GPUs each run asks Ray for (e.g. 1, or 0.5 to pack two per GPU; default 0)",
            ),
            opt(
                "--nproc-per-run",
                type=int,
                default=1,
                metavar="N",
                help="train each cell's model on N processes (DistributedDataParallel, as train --nproc); on Ray the cell "
                "reserves N CPUs (with GPUs, give --gpus-per-run N too); default 1",
            ),
            opt(
                "--retrain-stale",
                action="store_true",
                help="when a run directory was trained with another config than its cell's, move it aside "
                "(runs/<id>.stale-N) and train the cell anew; without it that is an error",
            ),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("study"),
    ),
    "report": Command(
        "Write figures and an HTML report (report/index.html, summary.md) for a study or a run.",
        commands.cmd_report,
        (
            TARGET,
            DATA_DIR,
            opt(
                "--no-classifier",
                action="store_true",
                help="leave out the generation scores (which 'vaelab score' computes; the report only reads them)",
            ),
            opt(
                "--render-only",
                action="store_true",
                help="render report/page.json as 'vaelab analyze' left it (no analysis: no model, no data)",
            ),
        ),
        examples=EXAMPLES.get("report"),
    ),
    "analyze": Command(
        "Compute what a study's or a run's report shows (figures, tables, findings) into "
        "report/page.json and report/fig/, without rendering it.",
        commands.cmd_analyze,
        (
            TARGET,
            DATA_DIR,
            opt("--no-classifier", action="store_true", help="leave out the generation scores"),
        ),
        examples=EXAMPLES.get("analyze"),
    ),
    "findings": Command(
        "Test the study's claims on a results.csv (a study directory's, or a committed one) and "
        "print them as Markdown: no runs, models or data needed.",
        commands.cmd_findings,
        (
            opt("results", metavar="RESULTS_CSV_OR_STUDY", help="a results.csv, or a study directory holding one"),
            opt("--forest", metavar="PNG", help="also draw the effects against their ±δ bands into this PNG"),
            opt(
                "--summary",
                metavar="SUMMARY_MD",
                help="also rewrite the Findings section of this summary.md (and its fig/findings_forest.png)",
            ),
        ),
        examples=EXAMPLES.get("findings"),
    ),
    "datasets": Command(
        "Show each dataset's status and where it was found.",
        commands.cmd_datasets,
        (DATA_DIR,),
        examples=EXAMPLES.get("datasets"),
    ),
    "export": Command(
        "Write a run's model to one shareable .safetensors file (weights, config, dataset facts; no "
        "pickle), which vaelab.load(FILE) and vaelab sample FILE read; or, for NAME.onnx, its encoder and decoder "
        "as NAME.encoder.onnx and NAME.decoder.onnx for onnxruntime and other runtimes (needs vaelab[onnx]).",
        commands.cmd_export,
        (
            opt("run", help="the run directory to export"),
            opt("file", metavar="FILE.safetensors|NAME.onnx", help="the model file to write"),
            opt("--force", action="store_true", help="replace the file(s) if they exist"),
        ),
        examples=EXAMPLES.get("export"),
    ),
    "serve": Command(
        "Explore a model's latent space in the browser: one slider per latent dimension (by KL), test images' "
        "codes, samples from the prior, the aggregate posterior or a class, interpolation and latent arithmetic "
        "(needs vaelab[serve]).",
        commands.cmd_serve,
        (
            RUN,
            opt("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"),
            opt("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)"),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("serve"),
    ),
    "score": Command(
        "Score generation with the reference classifier (conditional accuracy, Fréchet distance in its "
        "features) for a run, or for the runs a study's report shows; stored in their eval.json.",
        commands.cmd_score,
        (
            TARGET,
            opt("--samples", type=int, default=2000, help="samples per sampler (default 2000)"),
            opt(
                "--all",
                action="store_true",
                help="score every finished run of a study (e.g. to compare families or architectures), not only the report's",
            ),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("score"),
    ),
    "reproduce": Command(
        "Train and score a published VAE likelihood (a row of the literature's tables) over seeds, resumably, into "
        "DIR/reproduction.json beside the published value; --list shows the rows, --ledger DIR the table of a "
        "folder of such files.",
        commands.cmd_reproduce,
        (
            opt("row", nargs="?", help="the row's id (vaelab reproduce --list)"),
            opt("--list", action="store_true", help="list the published rows and exit"),
            opt("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)"),
            opt("--jobs", type=int, default=1, help="seeds trained at once, in as many processes (default 1)"),
            opt(
                "--budget",
                default=None,
                help="a reduced training budget (e.g. 2e6images, 50000steps); recorded as reduced",
            ),
            opt("--k", type=int, default=None, help="importance samples of the test NLL (default: the paper's)"),
            opt("--out", default=None, help="the reproduction's directory (default reproductions/ROW)"),
            opt("--ledger", metavar="DIR", default=None, help="print the ledger table of DIR/*.json"),
            opt(
                "--write",
                metavar="FILE",
                default=None,
                help="with --ledger: put the table into FILE (between its markers)",
            ),
            DATA_DIR,
        ),
        examples=EXAMPLES.get("reproduce"),
    ),
    "convert": Command(
        "Convert a vaelab 0.1 run's pickle checkpoint to the safe format (only if you trust it).",
        commands.cmd_convert,
        (
            opt("run", help="the vaelab 0.1 run directory holding checkpoint.pt"),
            opt(
                "--i-trust-this-file",
                action="store_true",
                help="required: converting unpickles the old file, which runs any code it holds",
            ),
        ),
        examples=EXAMPLES.get("convert"),
    ),
}


def add_all(add) -> None:
    """Every command's parser from the table, in the order `vaelab --help` lists them."""
    for name, c in COMMANDS.items():
        p = add(name, c.help, c.examples)
        for flags, kwargs in c.options:
            p.add_argument(*flags, **kwargs)
        if c.config_flags:
            _add_config_flags(p)
        p.set_defaults(func=c.func)

"""Reproductions of published VAE likelihoods: one row per published number (paper, table, protocol, value), a row
trained and scored over seeds into DIR/reproduction.json, and the ledger (docs/reproductions.md) made from those files."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_json, atomic_write_text, read_json_object
from vaelab.evaluation.evaluate import evaluate
from vaelab.runs.config import TrainConfig, parse_budget
from vaelab.study.execution import _run_pool
from vaelab.study.folders import Reproduction
from vaelab.training.loop import train
from vaelab.version import __version__


@dataclass(frozen=True)
class Row:
    """A published result and the recipe that produced it, as vaelab's config (the paper's network, optimiser, batch,
    schedule and split); `setup` says what the paper did that vaelab does differently."""

    id: str
    source: str  # paper, year, table
    model: str
    published: float  # nats, the paper's -log p(x) on its test set
    config: TrainConfig
    paper_epochs: int
    k: int = 5000  # importance samples of the paper's test NLL
    tolerance: float = 1.0  # nats, stated before the runs
    metric: str = "test NLL (nats), IWAE bound"
    binarization: str = "dynamic (training images drawn at every use; test drawn once)"
    setup: str = ""


# Burda et al. 2016, section 5 and appendix: 784-200-200-50 with tanh units each way, Bernoulli decoder, 60,000
# training images (no validation), Adam (beta2 0.999, eps 1e-4), batch 20, 3^i epochs at lr 1e-3 * 10^(-i/7) for
# i = 0..7 (3,280 epochs), test NLL with k = 5,000.
_TABLES = dict(dataset="binarized-mnist", likelihood="bernoulli", iwae_samples=5000)  # every row: scored at k = 5,000
_BURDA = dict(_TABLES, net="mlp_tanh", latent_dim=50, val_size=0, batch_size=20, lr=1e-3, cosine=True, epochs=3280)
_BURDA_SETUP = (
    "Burda et al. 2016 (section 5, appendix C): MLP 784-200-200-50, tanh (two stochastic layers: 200-200 to 100 "
    "units, 100-100 to 50), Bernoulli decoder; 60,000 training images; "
    "Adam, batch 20, lr 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7 (3,280 epochs); NLL with k = 5,000. vaelab: the "
    "same network, data and batch; a cosine decay from 1e-3 in place of the staircase; Adam's eps 1e-8, not 1e-4."
)
# Tomczak & Welling 2018, section 4, and their code (jmtomczak/vae_vampprior): two gated dense layers of 300 units
# each way, 40 latents, Bernoulli decoder; 50,000 / 10,000 / 10,000 split; AdamNormGrad (Adam on each gradient
# tensor scaled to unit norm) at lr 5e-4, batch 100, KL warm-up over 100 epochs, early stopping after 50 epochs
# without a better validation ELBO, at most 2,000 epochs; the posterior's log-variance through a hard tanh to
# [-6, 2], a one-sample KL, He-normal weights; K = 500 pseudo-inputs, clipped to [0, 1] by a hard tanh (their
# models/Model.py) from N(0.05, 0.01^2) (utils/load_data.py); NLL with 5,000 samples.
_TOMCZAK = dict(
    _TABLES,
    net="mlp_gated",
    latent_dim=40,
    val_size=10_000,
    batch_size=100,
    lr=5e-4,
    epochs=2000,
    patience=50,
    optimizer="adam_normgrad",
    posterior="gaussian_hardtanh",
    init="he",
)
# their HVAE (L = 2) has its own gated networks, bounded log-variances and He-normal weights (models.hvae)
_TOMCZAK_HVAE = {
    **{k: v for k, v in _TOMCZAK.items() if k not in ("net", "posterior", "init")},
    "model": "hvae",
}
_TOMCZAK_SETUP = (
    "Tomczak & Welling 2018 (section 4, and their code): gated MLP 300-300 each way, 40 latents, Bernoulli decoder; "
    "50,000 / 10,000 / 10,000 split; AdamNormGrad lr 5e-4, batch 100, KL warm-up 100 epochs, early stopping after 50 "
    "epochs, at most 2,000; log-variance through a hard tanh to [-6, 2], one-sample KL, He-normal weights; NLL with "
    "5,000 samples; pseudo-inputs clipped to [0, 1] by a hard tanh, started at N(0.05, 0.01^2). vaelab: the same; "
    "Bernoulli means not clamped to [1e-5, 1 - 1e-5]."
)

_TWO_LAYER = dict(model="two_layer", net="conv")  # the two_layer model has its own networks: net at its default


def _burda(row_id: str, what: str, described: str, published: float, **fields) -> Row:
    """A row of Burda et al. 2016's Table 1 (MNIST): their recipe with `fields` changed."""
    cfg = TrainConfig(**{**_BURDA, **fields})
    source = f"Burda et al. 2016, Table 1 (MNIST, {what})"
    return Row(row_id, source, described, published, cfg, 3280, setup=_BURDA_SETUP)


ROWS: dict[str, Row] = {
    r.id: r
    for r in (
        _burda("burda2016-vae", "one stochastic layer, VAE, k = 1", "VAE, MLP 200-200 tanh, 50 latents", 86.76),
        _burda(
            "burda2016-iwae-k5",
            "one stochastic layer, IWAE, k = 5",
            "IWAE (k = 5 in training), MLP 200-200 tanh, 50 latents",
            85.54,
            objective="iwae",
            train_samples=5,
        ),
        _burda(
            "burda2016-iwae-k50",
            "one stochastic layer, IWAE, k = 50",
            "IWAE (k = 50 in training), MLP 200-200 tanh, 50 latents",
            84.78,
            objective="iwae",
            train_samples=50,
        ),
        _burda(
            "burda2016-vae-2layer",
            "two stochastic layers, VAE, k = 1",
            "VAE with two stochastic layers (100 and 50 units; MLPs 200-200 and 100-100 tanh)",
            85.33,
            **_TWO_LAYER,
        ),
        _burda(
            "burda2016-iwae-k5-2layer",
            "two stochastic layers, IWAE, k = 5",
            "IWAE (k = 5 in training) with two stochastic layers (100 and 50 units)",
            83.89,
            objective="iwae",
            train_samples=5,
            **_TWO_LAYER,
        ),
        Row(
            "tomczak2018-vae",
            "Tomczak & Welling 2018, Table 2 (dynamic MNIST, VAE (L = 1), standard prior)",
            "VAE, gated MLP 300-300, 40 latents, N(0, I) prior",
            88.56,
            TrainConfig(**_TOMCZAK, warmup_epochs=100),
            2000,
            setup=_TOMCZAK_SETUP,
        ),
        Row(
            "tomczak2018-vampprior",
            "Tomczak & Welling 2018, Table 2 (dynamic MNIST, VAE (L = 1) + VampPrior)",
            "VAE, gated MLP 300-300, 40 latents, VampPrior (500 pseudo-inputs)",
            85.57,
            TrainConfig(**_TOMCZAK, warmup_epochs=100, prior="vamp_hardtanh", prior_components=500),
            2000,
            setup=_TOMCZAK_SETUP,
        ),
        Row(
            "tomczak2018-hvae-vampprior",
            "Tomczak & Welling 2018, Table 2 (dynamic MNIST, HVAE (L = 2) + VampPrior)",
            "HVAE with two stochastic levels of 40 units (gated MLPs 300-300), VampPrior (500 pseudo-inputs) on z2",
            83.19,
            TrainConfig(**_TOMCZAK_HVAE, warmup_epochs=100, prior="vamp_hardtanh", prior_components=500),
            2000,
            setup=_TOMCZAK_SETUP,
        ),
    )
}


def row(row_id: str) -> Row:
    if row_id not in ROWS:
        raise VaelabError(f"unknown reproduction '{row_id}' (known: {', '.join(ROWS)}; vaelab reproduce --list)")
    return ROWS[row_id]


def list_rows() -> list[dict]:
    """One line of facts per published row, for `vaelab reproduce --list`."""
    return [
        {
            "id": r.id,
            "source": r.source,
            "dataset": f"{r.config.dataset} ({r.binarization.split(' (')[0]})",
            "model": r.model,
            "metric": f"{r.metric}, k = {r.k:,}",
            "published": r.published,
        }
        for r in ROWS.values()
    ]


MNIST_TRAIN = 60_000  # every row's training split, before its validation images are carved off


def _n_train(cfg: TrainConfig) -> int:
    return MNIST_TRAIN - cfg.val_size


def epochs_of(r: Row, budget: str) -> float:
    """The epochs a budget buys for this row (its training set size and batch), or the paper's without one."""
    if not budget:
        return float(r.paper_epochs)
    amount, unit = parse_budget(budget)
    n_train = _n_train(r.config)
    per_epoch = {"images": n_train, "steps": math.ceil(n_train / r.config.batch_size)}
    if unit not in per_epoch:
        raise VaelabError(f"a reproduction's budget is a count of steps or images (e.g. 2e6images), got {budget!r}")
    return amount / per_epoch[unit]


def config_for(r: Row, seed: int, budget: str, k: int) -> TrainConfig:
    """The row's recipe for one seed; under a reduced budget the KL warm-up keeps its share of training."""
    cfg = r.config.replace(seed=seed, iwae_samples=k)
    if budget:
        share = min(1.0, epochs_of(r, budget) / r.paper_epochs)
        cfg = cfg.replace(budget=budget, warmup_epochs=r.config.warmup_epochs * share)
    return cfg


def machine() -> str:
    """This machine in words: cores and the CPU's model name (or the platform's processor)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {name}"


def _seed_result(rep: Reproduction, cfg: TrainConfig, data_dir, progress) -> dict:
    """Train (or resume, or find finished) one seed's run, then score it at the row's k (once)."""
    run = rep.run(cfg.seed)
    t0 = time.perf_counter()
    train(cfg, run.path, data_dir=data_dir, resume=run.holds_run(), progress=progress)
    scored = run.eval()
    if not (scored and scored.get("iwae_samples") == cfg.iwae_samples and "iwae_nll" in scored):
        scored = evaluate(run.path, data_dir=data_dir)
    history = run.metrics
    return {
        "seed": cfg.seed,
        "nll": scored["iwae_nll"],
        "neg_elbo": scored["neg_elbo"],
        "epochs": round((history[-1]["step"] if history else 0) * cfg.batch_size / _n_train(cfg), 2),
        "steps": history[-1]["step"] if history else 0,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def reproduce(
    row_id: str,
    out: str | Path,
    seeds: int = 3,
    budget: str = "",
    k: int | None = None,
    data_dir=None,
    progress: bool | None = None,
    jobs: int = 1,
) -> dict:
    """Train and score a row over seeds 0..seeds-1 in `out` (resumable: finished seeds are kept) and write
    out/reproduction.json; with jobs > 1 the seeds train in that many processes at once (as a study's cells do).
    A budget or k below the paper's is recorded, and such a row is never 'within'."""
    r = row(row_id)
    if not 1 <= seeds <= 100:
        raise VaelabError(f"--seeds must be in 1..100, got {seeds}")
    k = r.k if k is None else k
    if not 1 <= k <= 100_000:
        raise VaelabError(f"--k must be in 1..100,000, got {k}")
    if not 1 <= jobs <= 256:
        raise VaelabError(f"--jobs must be in 1..256, got {jobs}")
    epochs_of(r, budget)  # a budget this row cannot count is refused before anything trains
    rep = Reproduction(out)
    configs = [config_for(r, s, budget, k) for s in range(seeds)]
    if jobs > 1:  # train and score in parallel; the loop below then finds every seed done (or says why one is not)
        _run_pool([(str(rep.run(c.seed).path), c.to_dict()) for c in configs], min(jobs, seeds), data_dir)
    per_seed = [_seed_result(rep, c, data_dir, progress) for c in configs]
    result = summarize(r, per_seed, budget, k)
    atomic_write_json(rep.result_path, result)
    return result


def summarize(r: Row, per_seed: list[dict], budget: str, k: int) -> dict:
    """reproduction.json: the published value, the measured one per seed, their mean and sd, the gap and whether it
    is within the tolerance (never under a reduced budget or k)."""
    measured = [s["nll"] for s in per_seed]
    mean = statistics.fmean(measured)
    sd = statistics.stdev(measured) if len(measured) > 1 else 0.0
    reduced = bool(budget) or k < r.k
    epochs = statistics.fmean(s["epochs"] for s in per_seed)
    return {
        "id": r.id,
        "source": r.source,
        "model": r.model,
        "dataset": r.config.dataset,
        "binarization": r.binarization,
        "metric": r.metric,
        "k": k,
        "paper_k": r.k,
        "published": r.published,
        "measured": measured,
        "mean": mean,
        "sd": sd,
        "gap": mean - r.published,
        "tolerance": r.tolerance,
        "within": (not reduced) and abs(mean - r.published) <= r.tolerance,
        "reduced": reduced,
        "budget": budget or f"the paper's ({r.paper_epochs:,} epochs)",
        "epochs": epochs,
        "paper_epochs": r.paper_epochs,
        "per_seed": per_seed,
        "setup": r.setup,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "vaelab_version": __version__,
    }


LEDGER_KEYS = ("id", "source", "published", "measured", "mean", "sd", "tolerance", "within", "budget", "metric", "k")


def read_ledger(folder: str | Path) -> list[dict]:
    """The committed reproduction.json files of a ledger folder (ID.json each), checked for the fields the table
    needs, in the registry's order."""
    rows = []
    for path in sorted(Path(folder).glob("*.json")):
        d = read_json_object(path, "a reproduction.json")
        missing = [key for key in LEDGER_KEYS if key not in d]
        if missing:
            raise VaelabError(f"{path}: not a reproduction.json (missing {', '.join(missing)})")
        if path.stem != d["id"]:
            raise VaelabError(f"{path}: holds row '{d['id']}', not '{path.stem}'")
        rows.append(d)
    order = list(ROWS)
    return sorted(rows, key=lambda d: (order.index(d["id"]) if d["id"] in order else len(order), d["id"]))


def _within_cell(d: dict) -> str:
    if d.get("reduced"):
        return "not counted (reduced)"
    return "yes" if d["within"] else "no"


def ledger_markdown(folder: str | Path) -> str:
    """docs/reproductions.md's table: one line per committed row, generated (vaelab reproduce --ledger)."""
    rows = read_ledger(folder)
    within = sum(d["within"] for d in rows)
    reduced = [d for d in rows if d.get("reduced")]
    close = sum(abs(d["mean"] - d["published"]) <= d["tolerance"] for d in reduced)
    lines = [
        "| row | paper | metric | published | vaelab (mean ± sd, seeds) | gap | tolerance | within? | budget | "
        "day, machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in rows:
        budget = d["budget"] + (f" ({d['epochs']:.0f} of {d['paper_epochs']:,} epochs)" if d.get("reduced") else "")
        lines.append(
            f"| `{d['id']}` | {d['source']} | {d['metric']}, k = {d['k']:,} | {d['published']:.2f} | "
            f"{d['mean']:.2f} ± {d['sd']:.2f} ({len(d['measured'])}) | {d['mean'] - d['published']:+.2f} | "
            f"{d['tolerance']:g} | {_within_cell(d)} | {budget} | {d.get('date', '?')}, "
            f"{d.get('machine', '?')} |"
        )
    head = f"{within} of {len(rows)} rows within their tolerance under the papers' protocol"
    if reduced:
        head += (
            f"; {len(reduced)} ran a reduced budget or k and are not counted ({close} of them land within the "
            "tolerance all the same)"
        )
    head += ".\n\n"
    return head + "\n".join(lines) + "\n"


BEGIN, END = "<!-- ledger: generated by vaelab reproduce --ledger; do not edit -->", "<!-- end of ledger -->"


def write_ledger(folder: str | Path, path: str | Path) -> Path:
    """Put the ledger's table into `path` between its BEGIN and END markers (the rest of the page is prose kept as
    it is), or write the table alone when the file has no markers yet."""
    path = Path(path)
    table = f"{BEGIN}\n{ledger_markdown(folder)}{END}"
    text = path.read_text() if path.is_file() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + table + text[text.index(END) + len(END) :]
    else:
        text = table + "\n"
    atomic_write_text(path, text)
    return path

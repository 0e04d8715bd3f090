"""What a study directory holds, read back: each cell's status, results.csv, summaries over seeds, text tables, and
the generation scores of the runs a report shows."""

from __future__ import annotations

import io
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from vaelab.core.errors import VaelabError
from vaelab.core.store import (
    CONFIG,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
)
from vaelab.evaluation.metrics import columns as metric_columns
from vaelab.evaluation.metrics import computed as registered_metrics
from vaelab.evaluation.scoring import score_run
from vaelab.runs.config import TrainConfig, config_diff, from_dict, snapshot_fractions, upgrade
from vaelab.runs.run import Run
from vaelab.study import findings as vfindings
from vaelab.study import verdicts
from vaelab.study.folders import Study
from vaelab.study.spec import _FIELD_ORDER, format_value

INFO_COLUMNS = ["n_dims", "likelihood_discrete", "iwae_samples"]  # carried into results (units, K), never averaged


def _pid_alive(info: dict) -> bool:
    if info.get("host") != socket.gethostname():
        return True  # another machine's process: trust the marker
    try:
        os.kill(int(info["pid"]), 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def cell_status(run_dir: Path) -> str:
    run = Run(run_dir, check=False)
    if run.eval_path().is_file():
        return "done"
    if run.running_path.is_file():
        try:
            return "running" if _pid_alive(read_json(run.running_path)) else "interrupted"
        except VaelabError:
            return "interrupted"
    if run.error_path.is_file():
        return "failed"
    if run.metrics_path.is_file():
        return "interrupted"
    return "pending"


def first_failure(out: str | Path) -> tuple[str, str]:
    """(run id, reason) of the study's first failed cell, from its error.json."""
    for c in Study(out).spec()["cells"]:
        run_dir = Study(out).run_dir(c["run_id"])
        if cell_status(run_dir) == "failed":
            err = read_json(Run(run_dir, check=False).error_path)
            return c["run_id"], str(err.get("error", err) if isinstance(err, dict) else err)
    return "", ""


def arch_label(cfg: dict) -> str:
    """What a comparison of architectures compares, one label per run: the model when it is not the flat VAE
    (hierarchical), else the VAE's network (conv, resnet, ...). A results column, not a config field."""
    cfg = upgrade(cfg)
    model = cfg.get("model", "vae")
    return model if model != "vae" else cfg.get("net", "conv")


AXES = ("latent_dim", "beta", "seed")  # the columns findings group and pair by: numbers in every row


def check_table(df: pd.DataFrame, path) -> pd.DataFrame:
    """A results table `vaelab findings` can read, or one line naming the column and row that is not: the status,
    dataset and seed columns present, the axes numeric, and no infinite value in any numeric column."""
    missing = [c for c in ("status", "dataset", *AXES) if c not in df.columns]
    if missing:
        raise VaelabError(f"{path}: not a vaelab results table (no {', '.join(missing)} column)")
    # a metric the table lacks is a metric no run measured: the findings that need it are then not testable
    df = df.assign(**{c: np.nan for c in metric_columns() if c not in df.columns})
    label = (
        (lambda i: f"row {i + 2} ({df['run_id'].iloc[i]})") if "run_id" in df.columns else (lambda i: f"row {i + 2}")
    )
    done = (df["status"] == "done").to_numpy()
    for col in df.columns:
        values = pd.to_numeric(df[col], errors="coerce")
        numeric = values.notna().to_numpy()
        if col not in AXES and not numeric.any():
            continue  # a text column (budget, arch, objective)
        text = df[col].notna().to_numpy() & ~numeric & (done if col in AXES else True)
        if text.any():
            i = int(np.flatnonzero(text)[0])
            raise VaelabError(f"{path}: {col} in {label(i)} is {str(df[col].iloc[i])[:40]!r}, not a number")
        inf = np.flatnonzero(np.isinf(values.to_numpy(dtype=float)))
        if len(inf):
            raise VaelabError(f"{path}: {col} in {label(int(inf[0]))} is {values.iloc[inf[0]]}, not a finite number")
        if col in AXES:
            df[col] = values
    for col in AXES:
        empty = done & df[col].isna().to_numpy()
        if empty.any():
            raise VaelabError(
                f"{path}: {col} in {label(int(np.flatnonzero(empty)[0]))} is empty (a finished run has one)"
            )
    return df


def _findings_of(df, along=None) -> list:
    return vfindings.compute(latent_rows(df), beta_rows(df), df[df["status"] == "done"], along)


IWAE_COLUMNS = ("iwae_nll", "bpd_iwae")  # their value depends on K: fractions and the end compare at equal K only


def half_change(df, along) -> pd.Series:
    """Each run's relative change of test negative ELBO from the model kept at half of its budget to its end
    (negative: still improving); NaN where no model was kept at half."""
    if along is None or "fraction" not in along or "run_id" not in df:
        return pd.Series(np.nan, index=df.index)
    half = along[np.isclose(along["fraction"], 0.5)].drop_duplicates("run_id").set_index("run_id")["neg_elbo"]
    at_half = df["run_id"].map(half).astype(float)
    return (df["neg_elbo"] - at_half) / at_half.abs()


def study_findings(df, along=None) -> tuple[list, list]:
    """A results table's findings (vaelab.study.findings.compute on its β = 1 runs, its β sweep and every finished
    run), as (those its grid can test, those it cannot). `along`, the table of the models kept along training (a
    `fraction` column; results-fractions.csv), gives each finding its verdict at every fraction (IWAE-based claims
    only where the fraction was scored at the same K) and the ½ → end change of its cells."""
    if along is not None and len(along) and ("half_change" not in df or df["half_change"].isna().all()):
        df = df.assign(half_change=half_change(df, along))
    kept = _same_k(along, df) if along is not None and len(along) else None  # IWAE columns only at the end's K
    testable, untestable = verdicts.split_testable(_findings_of(df, kept))
    if kept is not None:
        earlier = {  # what the grid cannot test at a fraction (no generation scores there) counts as not measured
            float(fr): verdicts.split_testable(_findings_of(rows.drop(columns="fraction")))[0]
            for fr, rows in kept.groupby("fraction")
            if fr < 1
        }
        testable = verdicts.along_training(testable, earlier)
    return testable, untestable


def _same_k(rows, df):
    """A fraction's rows with their IWAE-based columns blanked where the run was scored at another K than at its end
    (e.g. K = 5 along training, K = 20 at the end: not the same quantity), or where K was not recorded."""
    if "iwae_samples" in rows and "iwae_samples" in df and "run_id" in rows and "run_id" in df:
        end = rows["run_id"].map(df.set_index("run_id")["iwae_samples"])
        other = ~(rows["iwae_samples"] == end).to_numpy()
    else:
        other = np.ones(len(rows), dtype=bool)
    rows = rows.copy()
    for c in IWAE_COLUMNS:
        if c in rows:
            rows.loc[other, c] = np.nan
    return rows


def read_fractions(out: str | Path):
    """A study's results-fractions.csv (None without one): what study_findings(df, along) traces verdicts on."""
    path = Study(out).fractions_path
    return pd.read_csv(path) if path.is_file() else None


def snapshot_fractions_of(out: str | Path) -> list[float]:
    """The fractions of the budget at which a study's cells keep models (their configs' snapshots)."""
    cells = Study(out).spec().get("cells") or []
    return sorted(
        {f for c in cells if isinstance(c, dict) for f in snapshot_fractions(c["config"].get("snapshots", ""))}
    )


def collect(out: str | Path, fraction: float | None = None):
    """One row per cell from the run directories (never cached, so never stale). With `fraction`, the metrics are
    those of the model each run kept at that fraction of its budget (a run that stopped early before it: its
    model); a cell without one is 'no snapshot'."""
    return _table(_cells(Path(out)), fraction)


def _cells(out: Path) -> list[tuple[Run, dict, dict]]:
    """Each cell's run, its row without the evaluation's metrics, and how its stored config differs from the
    cell's: what a table at any fraction shares, read once."""
    study = Study(out).spec()
    cells = study.get("cells") if isinstance(study, dict) else None
    if not isinstance(cells, list) or not all(
        isinstance(c, dict) and {"run_id", "config", "overrides"} <= set(c) for c in cells
    ):
        raise VaelabError(
            f"{out / 'study.json'}: damaged (no valid 'cells'); run the study command again to rewrite it"
        )
    found = []
    for c in cells:
        d = Study(out).run_dir(c["run_id"])
        run = Run(d, check=False)
        cfg = c["config"]
        row: dict[str, Any] = {
            "run_id": c["run_id"],
            "status": cell_status(d),
            **c["overrides"],
            **{k: cfg[k] for k in ("dataset", "latent_dim", "beta", "seed") if k not in c["overrides"]},
            "arch": arch_label(cfg),
        }
        row.update(_history_columns(read_jsonl(run.metrics_path)))
        if row["status"] == "failed":
            err = read_json(run.error_path)
            row["error"] = err.get("error") if isinstance(err, dict) else "damaged error.json"
        stale = stale_fields(d, from_dict(cfg)) if row["status"] == "done" else {}
        found.append((run, row, stale))
    return found


def _history_columns(hist: list[dict]) -> dict[str, Any]:
    """A run's training columns from its history (metrics.jsonl)."""
    full = [h["seconds"] for h in hist if not h.get("partial")]  # a time budget's last epoch may be cut short
    val = [h["val_neg_elbo"] for h in hist if "val_neg_elbo" in h]
    return {
        "epochs_done": len(hist),
        # the training images each run saw: what a time budget makes depend on the machine and its load
        "images_seen": round(sum(h["images_per_s"] * h["seconds"] for h in hist)) if hist else None,
        "train_seconds": sum(h["seconds"] for h in hist) if hist else None,
        "images_per_s": sum(h["images_per_s"] for h in hist) / len(hist) if hist else None,
        "seconds_per_epoch": sum(full) / len(full) if full else None,
        # how far from convergence: the last epoch whose validation ELBO improved (early stopping records it)
        "best_epoch": hist[-1].get("best_epoch") if hist else None,
        "stopped_early": bool(hist and hist[-1].get("stopped_early")),
        # the last epoch's relative change of the validation negative ELBO (< 0: still improving)
        "last_val_change": (val[-1] - val[-2]) / abs(val[-2]) if len(val) > 1 and val[-2] else None,
    }


def _table(cells: list[tuple[Run, dict, dict]], fraction: float | None):
    """The results table of `cells` (from _cells) with each run's evaluation at `fraction` (None: eval.json)."""
    rows = []
    for run, base, stale in cells:
        row = dict(base)
        error = row.pop("error", None)  # after the metrics, as results.csv has always had it
        ev = _eval_at(run, fraction, row)
        if ev is not None:
            ev = {**ev, **(ev.get("disentanglement") or {})}  # a factor dataset's scores sit in their own block
            row.update({k: ev.get(k) for k in metric_columns() + INFO_COLUMNS})
        if error is not None:
            row["error"] = error
        if row["status"] == "done" and stale:
            row["status"] = "stale"  # trained with another config than the spec's: never mixed into results
            row["error"] = "trained with another config: " + ", ".join(stale)
        rows.append(row)
    return pd.DataFrame(rows)


def _eval_at(run: Run, fraction: float | None, row: dict) -> dict | None:
    """The evaluation a row reads: eval.json, or at `fraction` the kept model's (the row's status says when there
    is none)."""
    if fraction is None or not run.eval_path().is_file():
        return run.eval() if run.eval_path().is_file() else None
    ev = run.snapshot_eval(fraction)
    if ev is None and row["stopped_early"] and not run.snapshot_path(fraction).is_file():
        return run.eval()  # patience ended training before this fraction: the model is the same from here on
    if ev is None:
        row["status"] = "no snapshot"
    return ev


def write_results(out: str | Path):
    """results.csv (and .parquet), and with snapshots results-fractions.csv: the same columns at each fraction of
    the budget (1 = results.csv's rows) in a `fraction` column."""
    out = Path(out)
    cells = _cells(out)  # read once for every fraction's table
    df = _table(cells, None)
    fractions = snapshot_fractions_of(out)
    along = None
    if fractions:
        along = pd.concat([_table(cells, f).assign(fraction=f) for f in fractions] + [df.assign(fraction=1.0)])
    if along is not None and 0.5 in fractions:
        df = df.assign(half_change=half_change(df, along))  # convergence: the ½ -> end change of each cell
    atomic_write_text(Study(out).results_path, df.to_csv(index=False))
    if along is not None:
        atomic_write_text(Study(out).fractions_path, along.to_csv(index=False))
    try:
        import pyarrow  # noqa: F401  (optional extra 'parquet': results.csv is the record without it)

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        atomic_write_bytes(Study(out).parquet_path, buf.getvalue())
    except ImportError:
        pass
    return df


def varied_keys(df, core: list[str]) -> list[str]:
    """`core` plus every other config field the study varies, except the seed: the groups a mean over seeds
    may pool. (A grid over likelihoods must not average a Bernoulli run with a logistic one.)"""
    extra = [k for k in _FIELD_ORDER if k in df and k not in core and k != "seed" and df[k].nunique(dropna=False) > 1]
    return core + extra


def summarize(df, by: list[str], metrics: list[str] | None = None):
    """mean, std and n over seeds of each metric, grouped by `by` and every other varied key (done cells only)."""
    metrics = [m for m in (metrics or metric_columns()) if m in df and df[m].notna().any()]
    done = df[df["status"] == "done"]
    if done.empty:
        return done
    by = varied_keys(done, by)
    g = done.groupby(by, sort=True, dropna=False)[metrics]
    std, n = g.std(), g.count()
    # The 95 % t interval of the mean over seeds: what the plots' error bars show (NaN for a single seed).
    half = std.mul(stats.t.ppf(0.975, (n - 1).where(n > 1)), axis=0) / np.sqrt(n)
    res = g.mean().join(std.add_suffix("_std")).join(half.add_suffix("_ci")).join(g.size().rename("n"))
    return res.reset_index()


def latent_rows(df):
    """The finished runs at beta = 1, one row per run (what the findings test)."""
    return df[(df["status"] == "done") & (df["beta"] == 1.0)]


def beta_rows(df):
    """The finished runs of each dataset's beta sweep: at the latent size with the most distinct betas."""
    parts = []
    for ds, sub in df[df["status"] == "done"].groupby("dataset"):
        counts = sub.groupby("latent_dim")["beta"].nunique()
        if counts.empty or counts.max() < 2:
            continue
        parts.append(sub[sub["latent_dim"] == counts.idxmax()])
    return pd.concat(parts) if parts else df.iloc[0:0]


def latent_table(df):
    """Per dataset x latent_dim (x any other varied key) at beta = 1."""
    return summarize(latent_rows(df), ["dataset", "latent_dim"])


def beta_table(df):
    """Per dataset x beta, at each dataset's beta-sweep latent size."""
    rows = beta_rows(df)
    return summarize(rows, ["dataset", "latent_dim", "beta"]) if len(rows) else pd.DataFrame()


def fmt_num(v: float, digits: int = 4) -> str:
    """Readable numbers: 16,150 rather than 1.615e+04."""
    return f"{v:,.0f}" if abs(v) >= 10**digits else f"{v:.{digits}g}"


def format_table(t, metrics: list[str] | None = None) -> str:
    """Render a summary as fixed-width text with mean ± std."""
    if t is None or len(t) == 0:
        return "(no finished runs yet)"
    keys = [c for c in _FIELD_ORDER if c in t and c != "seed"]
    metrics = [m for m in (metrics or metric_columns()) if m in t]
    header = keys + metrics + ["n"]
    rows = []
    for _, r in t.iterrows():
        cells = [format_value(r[k]) for k in keys]
        for m in metrics:
            std = r.get(f"{m}_std")
            cells.append(fmt_num(r[m]) + (f" ± {fmt_num(std, 2)}" if std is not None and std == std else ""))
        cells.append(str(int(r["n"])))
        rows.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(header)]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def status_text(out: str | Path) -> tuple[str, dict[str, int]]:
    df = write_results(out)
    counts = df["status"].value_counts().to_dict()
    cols = [
        c
        for c in df.columns
        if c not in ("error",) and c in ["run_id", "status", "epochs_done", "neg_elbo", "bpd_elbo", "active_units"]
    ]
    lines = [
        f"study {read_json(Path(out) / 'study.json')['name']}: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f" of {len(df)}",
        "",
        df[cols].to_string(index=False),
    ]
    if "error" in df and df["error"].notna().any():
        lines += ["", "failed or stale runs:"] + [
            f"  {r.run_id}: {r.error}" for r in df[df["error"].notna()].itertuples()
        ]
    short = ["neg_elbo", "recon", "kl", "bpd_elbo", "active_units", *(m.name for m in registered_metrics())]
    lines += ["", "by latent_dim (beta = 1), mean ± std over seeds:", format_table(latent_table(df), short)]
    bt = beta_table(df)
    if len(bt):
        lines += ["", "by beta, mean ± std over seeds:", format_table(bt, short)]
    return "\n".join(lines), counts


def representative(df, dataset: str, **match):
    """The first finished run of a dataset matching the given values (seed 0 preferred)."""
    sub = df[(df["dataset"] == dataset) & (df["status"] == "done")]
    for k, v in match.items():
        sub = sub[sub[k] == v]
    return None if sub.empty else sub.sort_values("seed").iloc[0]["run_id"]


def generation_runs(out: Path, df, every_seed: bool = False) -> list[tuple[str, Path]]:
    """Per dataset, the run whose generation the report shows: the largest latent size at β = 1, seed 0 (with
    `every_seed`, that cell's run of every seed: what the generation findings test)."""
    runs = []
    done = df[df["status"] == "done"]
    for ds_name in sorted(done["dataset"].unique()):
        sub = done[(done["dataset"] == ds_name) & (done["beta"] == 1.0)]
        if not len(sub):
            continue
        z = int(sub["latent_dim"].max())
        if every_seed:
            cell = sub[sub["latent_dim"] == z].sort_values("seed")
            runs += [
                (f"{ds_name}, latent_dim {z}, seed {r.seed}", Study(out).run_dir(r.run_id)) for r in cell.itertuples()
            ]
        else:
            runs.append(
                (f"{ds_name}, latent_dim {z}", Study(out).run_dir(representative(df, ds_name, latent_dim=z, beta=1.0)))
            )
    return runs


def score_target(target, data_dir=None, n: int = 2000, every: bool = False) -> list[tuple[str, dict | str]]:
    """`vaelab score`: a run's generation scores, or those of a study's generation cells (per dataset, the largest
    latent size at beta = 1, every seed, so that the generation findings have one score per seed; with `every`,
    all its finished runs), merged into their eval.json; failures are recorded there too."""

    target = Path(target)
    if Study(target).exists():
        df = write_results(target)
        runs = (
            [(r.run_id, Study(target).run_dir(r.run_id)) for r in df[df["status"] == "done"].itertuples()]
            if every
            else generation_runs(target, df, every_seed=True)
        )
    else:
        runs = [(str(target), Run(target).path)]
    out = []
    for label, run in runs:
        try:
            out.append((label, score_run(run, data_dir, n)))
        except (VaelabError, ValueError) as e:  # e.g. no data here, or a class with too few codes to fit
            ev_path = Run(run, check=False).eval_path()
            if ev_path.is_file():
                atomic_write_json(ev_path, {**read_json(ev_path), "generation_error": str(e)})
            out.append((label, str(e)))
    if Study(target).exists():
        write_results(target)  # results.csv carries the new scores
    return out


def stale_fields(run_dir: Path, cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The fields in which a run directory's stored config differs from the cell's: {field: (stored, wanted)}.

    Empty for a run not started yet. A stored config that no longer validates counts as differing in full."""
    path = Run(run_dir, check=False).config_path
    if not path.is_file():
        return {}
    try:
        stored = from_dict(read_json(path))
    except VaelabError as e:
        return {CONFIG: (str(e), "a valid config")}
    return config_diff(stored, cfg)

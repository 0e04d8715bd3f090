"""A report's page as the analysis builds it (sections of text, tables, figures and findings, saved as page.json), and the table helpers its sections share."""

from __future__ import annotations

from pathlib import Path

from vaelab.core.store import atomic_write_json
from vaelab.evaluation.metrics import METRICS
from vaelab.study import findings as vfindings
from vaelab.study import verdicts
from vaelab.study.findings import per_dim
from vaelab.study.results import (
    fmt_num,
)

N_MAP = 2000  # test images in latent maps (t-SNE cost grows quickly)
PAGE = "page.json"
SHORT = [
    "neg_elbo",
    "recon",
    "kl",
    "bpd_elbo",
    "bpd_iwae",
    "active_units",
    "psnr",
    "ssim",
]  # the sweep tables  # what the report renders: REPORT/page.json


class Page:
    """Collects sections of figures, tables, findings and text, already formatted; saved as JSON for the report."""

    def __init__(self, title: str):
        self.title, self.sections = title, []

    def section(self, title: str):
        self.sections.append({"title": title, "items": []})

    def add(self, kind: str, *payload):
        if kind == "finding":
            f = payload[0]
            item = {"kind": kind, "claim": f.claim, "verdict": f.verdict, "evidence": f.evidence}
            item["along"] = verdicts.along_text(f)  # the verdict at each fraction of training, and its stability
        elif kind == "glance":  # the findings at a glance: one row per finding (verdicts.glance_rows)
            item = {"kind": kind, "rows": verdicts.glance_rows(payload[0])}
        elif kind == "fig":
            item = {"kind": kind, "src": payload[0], "caption": payload[1]}
        elif kind == "table":
            item = {
                "kind": kind,
                "head": [str(h) for h in payload[0]],
                "rows": [[str(c) for c in r] for r in payload[1]],
            }
        else:
            item = {"kind": kind, "text": payload[0]}
        self.sections[-1]["items"].append(item)

    def to_dict(self) -> dict:
        return {"title": self.title, "sections": self.sections}


def _write(rep: Path, page: Page) -> Path:
    atomic_write_json(rep / PAGE, page.to_dict())
    return rep / PAGE


def _reference_table(t):
    """The reference VAE's rows of a summary table where a study varies a family or the network (the latent and
    β plots compare latent sizes and β, not families); a study of one model keeps its rows."""
    if t is None or len(t) == 0:
        return t
    kept = vfindings.reference_only(t)
    return kept.drop(columns=[k for k in vfindings.REFERENCE if k in kept])


def per_dim_unit(rows) -> str | None:
    """'bits/dim' when every run's likelihood is discrete, 'nats/dim' when none is, None when mixed or unknown."""
    got = per_dim(rows) if len(rows) else None
    return None if got is None else got[1]


def metric_header(name: str) -> str:
    """A metric's column header as its registry entry describes it: its unit and which way is better (↓ lower,
    ↑ higher)."""
    m = METRICS.get(name)
    if m is None:
        return name
    arrow = {True: " ↓", False: " ↑"}.get(m.lower_is_better, "")
    return f"{name} ({m.unit}{arrow})" if m.unit else f"{name}{arrow}"


def _table_rows(t, keys: list[str], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    head = keys + [metric_header(m) for m in metrics] + ["seeds"]
    rows = []
    for _, r in t.iterrows():
        cells = [f"{r[k]:g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
        for m in metrics:
            v, s = r.get(m), r.get(f"{m}_std")
            cells.append(
                "–" if v is None or v != v else fmt_num(v) + (f" ± {fmt_num(s, 2)}" if s is not None and s == s else "")
            )
        cells.append(str(int(r["n"])))
        rows.append(cells)
    return head, rows


# ---------------------------------------------------------------- single-run figures

"""`vaelab report`: a study's or a run's report/index.html and summary.md, rendered with Jinja2 from the page the
analysis wrote (report/page.json, vaelab.study.analysis). Rendering reads that file and the templates only: no
model, no data, no fit."""

from __future__ import annotations

import importlib
import time
import warnings
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from vaelab.core.errors import VaelabError
from vaelab.core.store import atomic_write_text, read_json
from vaelab.study.folders import Study
from vaelab.study.page import PAGE

_ENV = Environment(
    loader=PackageLoader("vaelab.report", "templates"),
    autoescape=select_autoescape(["html.j2"]),
    keep_trailing_newline=True,
)


def render(target: str | Path) -> Path:
    """TARGET/report/index.html and summary.md from TARGET/report/page.json; returns index.html."""
    rep = Study(target).report_dir  # a run's report folder has the same name (Run.report_dir)
    if not (rep / PAGE).is_file():
        raise VaelabError(f"{target}: nothing to render (no report/{PAGE}); run 'vaelab analyze {target}' first")
    page = read_json(rep / PAGE)
    made = time.strftime("%Y-%m-%d %H:%M")
    atomic_write_text(rep / "index.html", _ENV.get_template("report.html.j2").render(page=page, made=made))
    atomic_write_text(rep / "summary.md", _ENV.get_template("summary.md.j2").render(page=page))
    return rep / "index.html"


def __getattr__(name: str):
    """`vaelab.report.report` (analysis, then rendering) moved to `vaelab.app.commands.report` in 0.3; the old name
    still works for one release and warns. It is the one reference from a layer to one above it, looked up by name
    when the deprecated name is used (the renderer itself never imports the analysis); it goes in vaelab 0.4."""
    if name != "report":
        raise AttributeError(f"module 'vaelab.report' has no attribute {name!r}")
    warnings.warn(
        "vaelab.report.report moved to vaelab.app.commands.report; the old path goes in vaelab 0.4",
        DeprecationWarning,
        stacklevel=2,
    )
    return importlib.import_module("vaelab.app.commands").report

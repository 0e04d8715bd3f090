"""A study's spec: grids, zips and sweeps of config overrides expanded into cells, read from TOML, YAML or JSON;
errors name the file and the line."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vaelab.core.errors import VaelabError
from vaelab.runs.config import TrainConfig, coerce, from_dict, unknown_key_message, upgrade

_FIELD_ORDER = [f.name for f in fields(TrainConfig)]


def sweep(name: str, values: Iterable[Any]) -> list[dict]:
    return [{name: v} for v in values]


def product(*sweeps: list[dict]) -> list[dict]:
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*sweeps)]


def zipit(*sweeps: list[dict]) -> list[dict]:
    lengths = {len(s) for s in sweeps}
    if len(lengths) > 1:
        raise VaelabError(f"zip needs lists of equal length, got lengths {sorted(lengths)}")
    return [{k: v for d in combo for k, v in d.items()} for combo in zip(*sweeps)]


def chain(*sweeps: list[dict]) -> list[dict]:
    out: list[dict] = []
    for s in sweeps:
        out += [d for d in s if d not in out]
    return out


@dataclass(frozen=True)
class Cell:
    run_id: str
    config: TrainConfig
    overrides: dict


@dataclass(frozen=True)
class StudySpec:
    name: str
    base: dict
    sweeps: tuple[dict, ...]  # each {"grid": {k: [...]}, "zip": {k: [...]}, "base": {k: v}}
    cells: tuple[Cell, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "sweep": list(self.sweeps)}


# "cells" is what a study writes into its study.json (and what docs/studies/*/spec.json hold): the expanded runs,
# accepted so such a file re-runs as it stands, and checked against its base and sweeps (_check_cells).
_TOP_KEYS = ("name", "base", "grid", "zip", "sweep", "cells")


_SWEEP_KEYS = ("grid", "zip", "base")


def _line_of(text: str | None, key: str) -> int | None:
    if not text:
        return None
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*-?\s*\[*\s*['\"]?{re.escape(key)}['\"]?\s*(\]|=|:)", line):
            return i
    return None


def _fail(where: str, text: str | None, key: str | None, msg: str) -> VaelabError:
    line = _line_of(text, key) if key else None
    return VaelabError(f"{where}:{line}: {msg}" if line else f"{where}: {msg}")


def _key_in(msg: str, keys: Iterable[str]) -> str | None:
    for k in keys:
        if re.search(rf"\b{re.escape(k)}\b", msg):
            return k
    return None


def format_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_id(cfg: TrainConfig, keys: list[str]) -> str:
    """A readable, stable directory name from the values of the keys the study varies."""
    return "__".join(f"{k}-{format_value(getattr(cfg, k))}" for k in keys).replace("/", "_") or "run"


def parse_spec(d: dict, where: str = "<spec>", text: str | None = None) -> StudySpec:
    """Validate a spec mapping and expand it into cells; errors name the file and the line that is wrong."""
    _check_top(d, where, text)
    base = upgrade(dict(d.get("base") or {}))  # a 0.1 spec's base may name arch
    sweeps = [
        {**s, "base": upgrade(s["base"])} if isinstance(s, dict) and isinstance(s.get("base"), dict) else s
        for s in (d.get("sweep") or [])
    ]
    if "grid" in d or "zip" in d or not sweeps:
        sweeps.insert(0, {"grid": d.get("grid") or {}, "zip": d.get("zip") or {}})
    _check_values(base, where, text, "base")
    named: list[str] = []
    raw_cells: list[dict] = []
    for s in sweeps:
        raw_cells += _expand_sweep(s, where, text, named)
    keys = [k for k in _FIELD_ORDER if k in named]
    cells, seen = [], set()
    for overrides in raw_cells:
        try:
            cfg = from_dict({**base, **overrides})
        except VaelabError as e:
            key = _key_in(str(e), list(overrides) + list(base))
            raise _fail(where, text, key, f"{e} (in run {overrides})") from None
        rid = run_id(cfg, keys)
        if rid not in seen:
            seen.add(rid)
            cells.append(Cell(rid, cfg, {k: getattr(cfg, k) for k in keys}))
    if "cells" in d:
        _check_cells(d["cells"], cells, where, text)
    name = d.get("name") or Path(where).stem
    return StudySpec(str(name), base, tuple(sweeps), tuple(cells))


def _check_cells(stored, cells: list[Cell], where: str, text: str | None) -> None:
    """A study.json's recorded cells must be the runs its base and sweeps give today (same ids, same configs once
    read by this version), else re-running it would train something other than what it records."""
    try:
        recorded = {c["run_id"]: from_dict(c["config"]) for c in stored}
    except (TypeError, KeyError, VaelabError) as e:
        raise _fail(where, text, "cells", f"'cells' is not a list of recorded runs ({e})") from None
    for cell in cells:
        if recorded.get(cell.run_id) != cell.config:
            raise _fail(
                where,
                text,
                "cells",
                f"run {cell.run_id} is not what 'cells' records (the spec was edited or written by another version "
                "of vaelab); delete 'cells' to run what base and sweep say",
            )
    if len(recorded) != len(cells):
        raise _fail(where, text, "cells", f"'cells' records {len(recorded)} runs, base and sweep give {len(cells)}")


def _check_top(d, where: str, text: str | None) -> None:
    """The spec's top level: a mapping of known keys, with runs, each part of the right kind."""
    if not isinstance(d, dict):
        raise VaelabError(f"{where}: a study spec must be a table/mapping")
    for k in d:
        if not isinstance(k, str) or k not in _TOP_KEYS:
            raise _fail(where, text, str(k), unknown_key_message(str(k), _TOP_KEYS).replace("field", "key"))
    if not any(d.get(k) for k in ("grid", "zip", "sweep")):
        raise VaelabError(f"{where}: the spec defines no runs (give a [grid], a [zip] or [[sweep]] tables)")
    for k in ("base", "grid", "zip"):
        if not isinstance(d.get(k) or {}, dict):
            raise _fail(where, text, k, f"'{k}' must be a table of config fields, got {type(d[k]).__name__}")
    if not isinstance(d.get("sweep") or [], list):
        kind = type(d["sweep"]).__name__
        raise _fail(where, text, "sweep", f"'sweep' must be a list of tables ([[sweep]]), got {kind}")
    if not isinstance(d.get("name", ""), str):
        raise _fail(where, text, "name", "'name' must be a string")


def _check_values(table: dict, where: str, text: str | None, label: str) -> None:
    for k, v in table.items():
        try:
            coerce(k, v)
        except VaelabError as e:
            raise _fail(where, text, k, f"[{label}] {e}") from None


def _expand_sweep(s, where: str, text: str | None, named: list[str]) -> list[dict]:
    """One [[sweep]] table's runs: its grid's product zipped with its zip, each over its base; `named` collects the
    fields it varies."""
    if not isinstance(s, dict):
        raise VaelabError(f"{where}: each [[sweep]] must be a table")
    for k in s:
        if not isinstance(k, str) or k not in _SWEEP_KEYS:
            raise _fail(where, text, str(k), unknown_key_message(str(k), _SWEEP_KEYS).replace("field", "key"))
        if not isinstance(s[k] or {}, dict):
            raise _fail(where, text, k, f"[[sweep]] '{k}' must be a table of config fields")
    parts = []
    for kind in ("grid", "zip"):
        sweeps_of_kind = []
        for k, values in (s.get(kind) or {}).items():
            if not isinstance(values, list) or not values:
                raise _fail(where, text, k, f"[{kind}] {k} must be a non-empty list")
            for v in values:
                _check_values({k: v}, where, text, kind)
            sweeps_of_kind.append(sweep(k, values))
            named.append(k)
        if sweeps_of_kind:
            parts.append(product(*sweeps_of_kind) if kind == "grid" else zipit(*sweeps_of_kind))
    sbase = s.get("base") or {}
    _check_values(sbase, where, text, "sweep.base")
    named += list(sbase)
    return [{**sbase, **c} for c in (product(*parts) if parts else [{}])]


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise VaelabError(f"{path}: not a text file (study specs are UTF-8 TOML, YAML or JSON)") from None
    except OSError as e:
        raise VaelabError(f"{path}: cannot read study spec ({e.strerror or e})") from None
    if path.suffix == ".toml":
        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise VaelabError(f"{path}: invalid TOML ({e})") from None
    elif path.suffix in (".yaml", ".yml"):
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise VaelabError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    elif path.suffix == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise VaelabError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    else:
        raise VaelabError(f"{path}: study specs are .toml, .yaml/.yml or .json")
    return parse_spec(d, str(path), text)

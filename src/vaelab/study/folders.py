"""A study's and a reproduction's directories: the only code, with Run, that knows the files in them."""

from __future__ import annotations

from pathlib import Path

from vaelab.core.store import read_json
from vaelab.runs.run import Run


class Study:
    """One study directory: study.json (the spec and its cells), runs/<run id>/ (one run directory per cell),
    results.csv (and .parquet) and report/. The only code, with Run, that knows these names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r})"

    @property
    def spec_path(self) -> Path:
        return self.path / "study.json"

    @property
    def results_path(self) -> Path:
        return self.path / "results.csv"

    @property
    def fractions_path(self) -> Path:
        """results-fractions.csv: results.csv's columns for the models kept along training, at each fraction."""
        return self.path / "results-fractions.csv"

    @property
    def parquet_path(self) -> Path:
        return self.path / "results.parquet"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    def exists(self) -> bool:
        """Whether the directory holds a study (its study.json)."""
        return self.spec_path.is_file()

    def spec(self) -> dict:
        return read_json(self.spec_path)

    def run_dir(self, run_id: str) -> Path:
        return self.path / "runs" / run_id

    def run(self, run_id: str) -> Run:
        return Run(self.run_dir(run_id), check=False)


class Reproduction:
    """One reproduction directory (`vaelab reproduce ID --out DIR`): seed-<n>/ (one run directory per seed) and
    reproduction.json (the row's published value beside the measured ones). The only code that knows these names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Reproduction({str(self.path)!r})"

    @property
    def result_path(self) -> Path:
        return self.path / "reproduction.json"

    def run(self, seed: int) -> Run:
        return Run(self.path / f"seed-{seed}", check=False)

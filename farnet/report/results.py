"""The one validating reader of ``results/``: each run's metrics, run info, predictions and per-landmark errors.

The evaluate stage writes four files per run ``<run>``: ``metrics/<run>.json`` (split → summary),
``runs/<run>.json`` (how the run was made: dataset, fold, model, loss, seed, profile, …),
``predictions/<run>.csv`` (one row per image and landmark) and ``per_landmark/<run>.csv``. A run exists when
both JSON files do. Every read raises :class:`~farnet.core.errors.DataError` naming the file when it is missing or
malformed, so no table is built from a half-written result. Tables find their runs by what the run info says
they are (:meth:`Results.select`), never by their names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from farnet.core.fileio import read_json_object
from farnet.core.errors import DataError

#: what a table selects its runs by
RUN_KEYS = ("dataset", "fold", "architecture", "backbone", "fusion", "refinement", "loss", "seed")
#: what every run info must state (the selection keys, and what the tables and figures print)
RUN_INFO_KEYS = (*RUN_KEYS, "profile", "alpha", "epochs", "steps", "train_wall_s")
PREDICTION_COLUMNS = ("split", "decode", "image_id", "landmark", "name",
                      "x_pred", "y_pred", "x_true", "y_true", "error_px", "error_mm")
PER_LANDMARK_COLUMNS = ("split", "decode", "landmark", "name")
#: what must match for two runs to be compared with each other (:meth:`Results.trained_like`)
COMPARABLE_KEYS = ("profile", "input_hw", "epochs", "full_set", "pretrained", "optimizer", "lr", "sigma_px")
#: ISBI 2015's test sets as ``metrics/<run>.json`` keys them → their label in the tables (Test1, Test2)
TEST_SPLITS = {"test1": "Test1", "test2": "Test2"}


@dataclass(frozen=True)
class TableRuns:
    """Which run fills each row of one table.

    Attributes:
        rows: row label → the run shown there, None for a row not run yet (in the table's order).
        duplicates: row label → every run that matched it, where more than one did (the first is shown).
    """

    rows: dict[str, str | None]
    duplicates: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, runs: Iterable[str]) -> TableRuns:
        """Rows that are runs themselves (the extra tables list runs, not the paper's rows)."""
        return cls({run: run for run in runs})

    @property
    def present(self) -> list[str]:
        """The runs shown, in row order."""
        return [run for run in self.rows.values() if run is not None]

    @property
    def first(self) -> str | None:
        """The first run shown, None when no row has run."""
        return next(iter(self.present), None)


class Results:
    """Read access to one ``results/`` folder, by run name; each JSON file is read once."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._json: dict[Path, dict[str, Any]] = {}

    def runs(self) -> list[str]:
        """Every run with metrics and run info, sorted by name."""
        return sorted(path.stem for path in (self.root / "runs").glob("*.json") if self.has(path.stem))

    def has(self, run: str) -> bool:
        return self._path("metrics", run, ".json").is_file() and self._path("runs", run, ".json").is_file()

    def metrics(self, run: str, split: str | None = None) -> dict[str, Any]:
        """All of a run's metrics (split → summary), or one split's summary.

        Raises:
            DataError: the file is missing or malformed, or has no ``split``.
        """
        path = self._path("metrics", run, ".json")
        metrics = self._read_json(path)
        if split is None:
            return metrics
        if split not in metrics:
            raise DataError(path, f"no split {split!r} (has {sorted(metrics)})")
        return metrics[split]

    def info(self, run: str) -> dict[str, Any]:
        """How a run was made (``results/runs/<run>.json``).

        Raises:
            DataError: the file is missing or malformed, or lacks a key of :data:`RUN_INFO_KEYS`.
        """
        path = self._path("runs", run, ".json")
        info = self._read_json(path)
        missing = [key for key in RUN_INFO_KEYS if key not in info]
        if missing:
            raise DataError(path, f"missing keys {missing}")
        return info

    def predictions(self, run: str) -> pd.DataFrame:
        """A run's predictions: columns :data:`PREDICTION_COLUMNS`, coordinates in original pixels.

        ``error_mm`` is empty on every row of a dataset measured in another unit (the spine's fractions).

        Raises:
            DataError: the file is missing, lacks a column, or has a missing / non-finite error.
        """
        path = self._path("predictions", run, ".csv")
        df = _read_csv(path, PREDICTION_COLUMNS)
        df = df.assign(error_px=_finite(df, "error_px", path))
        if df["error_mm"].isna().all():
            return df
        return df.assign(error_mm=_finite(df, "error_mm", path))

    def has_predictions(self, run: str) -> bool:
        """Whether the run's predictions are here (a checkout without the pipeline's outputs has its metrics and
        run info alone: tables are then built without the intervals that need the predictions)."""
        return self._path("predictions", run, ".csv").is_file()

    def per_landmark(self, run: str) -> pd.DataFrame:
        """A run's error per split, decoder and landmark: :data:`PER_LANDMARK_COLUMNS` and
        ``mre_mm, sd_mm`` (``mre_px, sd_px`` for a dataset without a mm unit).

        Raises:
            DataError: the file is missing or lacks a column.
        """
        path = self._path("per_landmark", run, ".csv")
        df = _read_csv(path, PER_LANDMARK_COLUMNS)
        if not any({f"mre_{unit}", f"sd_{unit}"} <= set(df.columns) for unit in ("mm", "px")):
            raise DataError(path, "missing columns ['mre_mm', 'sd_mm'] (or ['mre_px', 'sd_px'])", line=1)
        return df

    def trained_like(self, run: str) -> str:
        """A key that two runs share when they were trained alike (:data:`COMPARABLE_KEYS`): the tables compare
        such runs only."""
        info = self.info(run)
        return json.dumps([info.get(key) for key in COMPARABLE_KEYS])

    def alike_groups(self, runs: Iterable[str]) -> list[list[str]]:
        """``runs`` in groups trained alike (:meth:`trained_like`), each in the given order, groups in the order
        of their first run."""
        groups: dict[str, list[str]] = {}
        for run in runs:
            groups.setdefault(self.trained_like(run), []).append(run)
        return list(groups.values())

    def matching(self, **config: Any) -> list[str]:
        """The runs, sorted by name, whose run info has every ``key = value`` of ``config``.

        Raises:
            ValueError: a key is not one of :data:`RUN_KEYS`.
        """
        unknown = sorted(set(config) - set(RUN_KEYS))
        if unknown:
            raise ValueError(f"runs are selected by {list(RUN_KEYS)}, not by {unknown}")
        return [run for run in self.runs()
                if all(self.info(run)[key] == value for key, value in config.items())]

    def select(self, specs: Mapping[str, Mapping[str, Any]]) -> TableRuns:
        """One run per row: row label → the settings its run must have (see :meth:`matching`).

        When several runs match a row, the first by name is shown and all are kept in ``duplicates`` (the
        table's header warns about them), so the choice never depends on the order files were written.
        """
        rows, duplicates = {}, {}
        for label, spec in specs.items():
            found = self.matching(**spec)
            rows[label] = found[0] if found else None
            if len(found) > 1:
                duplicates[label] = tuple(found)
        return TableRuns(rows, duplicates)

    def _path(self, folder: str, run: str, suffix: str) -> Path:
        return self.root / folder / f"{run}{suffix}"

    def _read_json(self, path: Path) -> dict[str, Any]:
        if path not in self._json:
            self._json[path] = read_json_object(path)
        return self._json[path]


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file not found")
    df = pd.read_csv(path, dtype={"image_id": str})
    missing = [column for column in columns if column not in df.columns]
    if missing:
        raise DataError(path, f"missing columns {missing}", line=1)
    return df


def _finite(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``df[column]`` as numbers, every one finite."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = ~values.map(math.isfinite)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(path, f"{column} is not a finite number: {df[column].iloc[row]!r}", line=row + 2)
    return values

"""Federation data: the declared data schema, and checking and loading an institution's CSV.

Every institution turns its raw rows into model inputs with the same :class:`DataSchema`;
the schema is the ``[federation.data]`` table of the federation's config and its
:meth:`DataSchema.digest` is recorded on the ledger, so an auditor can tell which
preprocessing a round was trained under.

Encoding (features in declared order)

* numeric → 1 column ``(x - mean) / scale``; a missing cell takes the fixed ``impute``
  value (``missing = "impute"``) or is a problem (``missing = "refuse"``);
* categorical → one-hot over the fixed, ordered ``categories``; a missing cell is an
  all-zero block (``missing = "zeros"``) or a problem (``"refuse"``); a value that is not
  one of the categories is always a problem, never a silent all-zero block, because it
  usually means the institution codes the column differently;
* boolean → 1 column, 1.0 for a ``true_values`` cell and 0.0 for a ``false_values`` cell;
  a missing cell takes ``impute`` or is a problem; any other text is a problem;
* target: 1.0 for ``positive_label``, 0.0 for ``negative_label``; a missing or other
  label is a problem;
* columns named in ``ignored_columns`` (e.g. an exported ``rownames``) may be present and
  are dropped; any other column not in the schema is a problem.

Cells are compared exactly as written; the texts in :data:`MISSING_MARKERS` are missing.
Rows are numbered from 1 over the data records, the header not counted (blank lines are
skipped and not counted). :func:`check_csv` reports every problem in a file, each with its
column, the first few row numbers and the total count.

Errors::

    ValueError
     └── DataMismatchError      data does not fit the schema (``problems`` lists why)
          └── DataFileError     … and it came from a file (``path`` names it)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from ledger.formats import canonical_json, sha256_hex

__all__ = [
    "BooleanFeature",
    "CategoricalFeature",
    "DataCheck",
    "DataFileError",
    "DataMismatchError",
    "DataProblem",
    "DataSchema",
    "Feature",
    "MISSING_MARKERS",
    "NumericFeature",
    "ProblemKind",
    "check_csv",
    "load_csv",
]

FloatArray = npt.NDArray[np.float32]

#: Cell texts read as "missing" in an institution's CSV (and nothing else is).
MISSING_MARKERS: tuple[str, ...] = ("", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "<NA>")

ProblemKind = Literal[
    "unreadable",
    "encoding",
    "empty",
    "not_csv",
    "missing_column",
    "unexpected_column",
    "repeated_column",
    "missing_value",
    "non_numeric",
    "non_finite",
    "unknown_category",
    "unknown_boolean",
    "unknown_label",
]

_MAX_ROWS = 10  # example row numbers listed per problem; the count gives the rest
_MAX_VALUES = 3  # offending values quoted per problem; enough to fix the file
_MAX_VALUE_CHARS = 40


# --- schema -----------------------------------------------------------------------------


def _not_missing_markers(values: Sequence[str], what: str) -> None:
    markers = [v for v in values if v in MISSING_MARKERS]
    if markers:
        raise ValueError(f"{what} {markers[0]!r} would be read as a missing value")


class _FeatureBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)


class NumericFeature(_FeatureBase):
    """A numeric feature: standardised with fixed constants, missing cells imputed or refused."""

    type: Literal["numeric"]
    missing: Literal["impute", "refuse"] = "refuse"
    impute: float | None = Field(default=None, allow_inf_nan=False)
    mean: float = Field(allow_inf_nan=False)
    scale: float = Field(gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _impute_matches_missing(self) -> NumericFeature:
        _check_impute(self.name, self.missing, self.impute)
        return self

    @property
    def width(self) -> int:
        """Encoded columns this feature takes."""
        return 1


class CategoricalFeature(_FeatureBase):
    """A categorical feature one-hot encoded over a fixed, ordered category list."""

    type: Literal["categorical"]
    categories: tuple[str, ...] = Field(min_length=1)
    missing: Literal["zeros", "refuse"] = "refuse"

    @field_validator("categories")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            repeated = sorted({v for v in value if value.count(v) > 1})
            raise ValueError(f"categories must be unique; repeated: {', '.join(map(repr, repeated))}")
        _not_missing_markers(value, "category")
        return value

    @property
    def width(self) -> int:
        """Encoded columns this feature takes (one per category)."""
        return len(self.categories)


class BooleanFeature(_FeatureBase):
    """A yes/no feature encoded as one 0/1 column from the declared true and false texts."""

    type: Literal["boolean"]
    true_values: tuple[str, ...] = Field(min_length=1)
    false_values: tuple[str, ...] = Field(min_length=1)
    missing: Literal["impute", "refuse"] = "refuse"
    impute: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BooleanFeature:
        both = sorted(set(self.true_values) & set(self.false_values))
        if both:
            raise ValueError(f"true_values and false_values overlap: {', '.join(map(repr, both))}")
        _not_missing_markers([*self.true_values, *self.false_values], "boolean value")
        _check_impute(self.name, self.missing, self.impute)
        return self

    @property
    def width(self) -> int:
        """Encoded columns this feature takes."""
        return 1


def _check_impute(name: str, missing: str, impute: object) -> None:
    if missing == "impute" and impute is None:
        raise ValueError(f"feature {name!r}: missing = 'impute' needs an impute value")
    if missing != "impute" and impute is not None:
        raise ValueError(f"feature {name!r}: impute is set but missing = {missing!r}")


#: One declared feature; ``type`` selects which.
Feature = Annotated[NumericFeature | CategoricalFeature | BooleanFeature, Field(discriminator="type")]


class DataSchema(BaseModel):
    """The federation-wide recipe that turns raw rows into model inputs, identically everywhere.

    Validates the ``[federation.data]`` table of the federation's config as is.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: str = Field(min_length=1)
    positive_label: str = Field(min_length=1)
    negative_label: str = Field(min_length=1)
    features: tuple[Feature, ...] = Field(min_length=1)
    ignored_columns: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DataSchema:
        if self.positive_label == self.negative_label:
            raise ValueError("positive_label and negative_label must differ")
        _not_missing_markers([self.positive_label, self.negative_label], "label")
        names = [self.target, *self.feature_columns, *self.ignored_columns]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"column named more than once: {', '.join(map(repr, dupes))}")
        return self

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Input column names in encoding order."""
        return tuple(f.name for f in self.features)

    @property
    def n_features(self) -> int:
        """Width of the encoded feature vector, i.e. the model's input size."""
        return sum(f.width for f in self.features)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Name of every encoded column (``column=category`` for one-hot slots), in order."""
        names: list[str] = []
        for f in self.features:
            if isinstance(f, CategoricalFeature):
                names.extend(f"{f.name}={c}" for c in f.categories)
            else:
                names.append(f.name)
        return tuple(names)

    def digest(self) -> str:
        """SHA-256 hex of the schema's canonical JSON, for recording on the ledger."""
        return sha256_hex(canonical_json(self.model_dump(mode="json")))

    def transform(self, df: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
        """Encode raw rows into ``(X float32 [n, n_features], y float32 0/1 [n])``.

        Raises :class:`DataMismatchError` listing every problem (rows numbered by position
        from 1) if the frame does not fit the schema.
        """
        header = [str(c) for c in df.columns]
        found = _Problems(np.arange(1, len(df) + 1))
        if len(df) == 0:
            found.of_file("empty", "no data rows")
        encoded = _encode(self, header, lambda i: df.iloc[:, i], len(df), found)
        if encoded is None:
            raise DataMismatchError("data frame", found.items)
        return encoded


# --- problems ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataProblem:
    """One way data fails the schema: what, in which column, on which rows (1-based), how often.

    ``rows`` lists at most the first few offending rows; ``count`` is how many there are
    in total (0 for a problem of the file or its header).
    """

    kind: ProblemKind
    column: str | None
    rows: tuple[int, ...]
    count: int
    message: str


@dataclass(frozen=True)
class DataCheck:
    """Everything :func:`check_csv` found in one file; ``ok`` when nothing."""

    path: Path
    rows: int
    problems: tuple[DataProblem, ...]

    @property
    def ok(self) -> bool:
        """True when the file fits the schema and can be trained on."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for ``--json`` output)."""
        return {
            "path": str(self.path),
            "rows": self.rows,
            "ok": self.ok,
            "problems": [
                {"kind": p.kind, "column": p.column, "rows": list(p.rows), "count": p.count,
                 "message": p.message}
                for p in self.problems
            ],
        }


class DataMismatchError(ValueError):
    """Data that does not fit the schema; ``problems`` says each way it fails."""

    def __init__(self, source: str, problems: Sequence[DataProblem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(f"{source}: " + "; ".join(p.message for p in self.problems))


class DataFileError(DataMismatchError):
    """An institution's data file that cannot be used; the message names the file."""

    def __init__(self, path: Path, problems: Sequence[DataProblem]) -> None:
        self.path = path
        super().__init__(str(path), problems)


def _where(rows: Sequence[int], count: int, unit: str = "row") -> str:
    listed = ", ".join(str(r) for r in rows)
    more = ", …" if count > len(rows) else ""
    return f"{unit} {listed}{more} ({count} {unit}{'s' if count != 1 else ''})"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def _quote(values: pd.Series, singular: str) -> str:
    distinct = pd.unique(values.to_numpy(dtype=object))
    shown = ", ".join(_short(v) for v in distinct[:_MAX_VALUES])
    noun = singular if len(distinct) == 1 else singular + "s"
    more = f" and {len(distinct) - _MAX_VALUES} more" if len(distinct) > _MAX_VALUES else ""
    return f"{noun} {shown}{more}"


class _Problems:
    """Collects problems in the order found; ``row_numbers`` maps frame positions to rows."""

    def __init__(self, row_numbers: npt.NDArray[np.int64]) -> None:
        self.row_numbers = row_numbers
        self.items: list[DataProblem] = []

    def of_file(self, kind: ProblemKind, message: str, column: str | None = None) -> None:
        self.items.append(DataProblem(kind, column, (), 0, message))

    def of_rows(
        self,
        kind: ProblemKind,
        column: str | None,
        mask: npt.NDArray[np.bool_],
        what: Callable[[npt.NDArray[np.bool_]], str],
    ) -> None:
        if not mask.any():
            return
        rows = self.row_numbers[mask]
        shown = tuple(int(r) for r in rows[:_MAX_ROWS])
        named = f"column {column!r}: " if column is not None else ""
        message = f"{_where(shown, len(rows))}: {named}{what(mask)}"
        self.items.append(DataProblem(kind, column, shown, len(rows), message))


# --- encoding ---------------------------------------------------------------------------


def _missing(raw: pd.Series) -> npt.NDArray[np.bool_]:
    missing = raw.isna().to_numpy(dtype=bool)
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        missing = missing | raw.isin(MISSING_MARKERS).to_numpy(dtype=bool)
    return missing


def _as_text(raw: pd.Series) -> pd.Series:
    """Cells as ``str`` (missing stays NaN), so categories and labels compare as text."""
    if pd.api.types.infer_dtype(raw, skipna=True) in ("string", "empty"):
        return raw.astype(object)
    if pd.api.types.is_float_dtype(raw.dtype):
        present = raw.dropna()
        if np.isfinite(present).all() and (present == np.floor(present)).all():
            # What pandas makes of an integer code column with gaps: compare as integers.
            return raw.astype("Int64").astype(str).where(raw.notna(), np.nan).astype(object)
    return raw.astype(str).where(raw.notna(), np.nan).astype(object)


def _encode(
    schema: DataSchema,
    header: list[str],
    column: Callable[[int], pd.Series],
    n_rows: int,
    found: _Problems,
) -> tuple[FloatArray, FloatArray] | None:
    """Check and encode; ``None`` (with ``found`` filled in) if anything does not fit.

    The caller reports an empty table; with no rows this checks only the header.
    """
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        positions.setdefault(name, []).append(i)
    expected = [schema.target, *schema.feature_columns]
    allowed = {*expected, *schema.ignored_columns}
    for name in expected:
        if name not in positions:
            found.of_file("missing_column", f"column {name!r}: missing", name)
    for name, where in positions.items():
        fields = ", ".join(str(i + 1) for i in where)
        if name not in allowed:
            found.of_file(
                "unexpected_column",
                f"column {name!r} (header field {fields}): not in the schema and not ignored",
                name,
            )
        elif len(where) > 1:
            found.of_file(
                "repeated_column",
                f"column {name!r}: appears {len(where)} times in the header (fields {fields})",
                name,
            )
    usable = {n: w[0] for n, w in positions.items() if len(w) == 1 and n in allowed}

    X = np.zeros((n_rows, schema.n_features), dtype=np.float32)
    y = np.zeros(n_rows, dtype=np.float32)
    if schema.target in usable:
        _encode_target(schema, column(usable[schema.target]), y, found)
    offset = 0
    for feature in schema.features:
        if feature.name in usable:
            raw = column(usable[feature.name])
            if isinstance(feature, NumericFeature):
                _encode_numeric(feature, raw, X[:, offset], found)
            elif isinstance(feature, CategoricalFeature):
                _encode_categorical(feature, raw, X[:, offset : offset + feature.width], found)
            else:
                _encode_boolean(feature, raw, X[:, offset], found)
        offset += feature.width
    return None if found.items else (X, y)


def _refuse_missing(
    name: str, missing: npt.NDArray[np.bool_], found: _Problems, what: str = "missing value"
) -> None:
    found.of_rows("missing_value", name, missing, lambda _: f"{what} (the schema refuses them)")


def _encode_target(
    schema: DataSchema, raw: pd.Series, out: npt.NDArray[np.float32], found: _Problems
) -> None:
    text = _as_text(raw)
    missing = _missing(raw)
    positive = text.eq(schema.positive_label).to_numpy(dtype=bool) & ~missing
    negative = text.eq(schema.negative_label).to_numpy(dtype=bool) & ~missing
    unknown = ~(positive | negative | missing)
    found.of_rows("missing_value", schema.target, missing, lambda _: "missing label")
    found.of_rows(
        "unknown_label",
        schema.target,
        unknown,
        lambda m: f"unknown {_quote(text[m], 'label')} "
        f"(expected {schema.positive_label!r} or {schema.negative_label!r})",
    )
    out[positive] = 1.0


def _encode_numeric(
    feature: NumericFeature, raw: pd.Series, out: npt.NDArray[np.float32], found: _Problems
) -> None:
    missing = _missing(raw)
    present = raw.where(~missing)
    try:
        values = present.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):  # some cell is not a number: find which, slower
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    non_numeric = np.isnan(values) & ~missing
    if feature.missing == "impute":
        assert feature.impute is not None  # the model validator guarantees it
        values = np.where(missing, feature.impute, values)
    else:
        _refuse_missing(feature.name, missing, found)
    with np.errstate(over="ignore", invalid="ignore"):
        encoded = ((values - feature.mean) / feature.scale).astype(np.float32)
    # inf/-inf as text, and finite numbers beyond float32 once standardised.
    non_finite = ~np.isfinite(encoded) & ~non_numeric & ~missing
    found.of_rows(
        "non_numeric", feature.name, non_numeric,
        lambda m: f"non-numeric {_quote(raw[m], 'value')}",
    )
    found.of_rows(
        "non_finite", feature.name, non_finite,
        lambda m: f"not a finite number in range: {_quote(raw[m], 'value')}",
    )
    out[:] = np.where(np.isfinite(encoded), encoded, 0.0)


def _encode_categorical(
    feature: CategoricalFeature, raw: pd.Series, out: npt.NDArray[np.float32], found: _Problems
) -> None:
    text = _as_text(raw)
    missing = _missing(raw)
    codes = pd.Index(feature.categories, dtype=object).get_indexer(text.where(~missing))
    unknown = (codes < 0) & ~missing
    if feature.missing == "refuse":
        _refuse_missing(feature.name, missing, found)
    found.of_rows(
        "unknown_category", feature.name, unknown,
        lambda m: f"unknown {_quote(text[m], 'category')} "
        f"(expected one of {', '.join(map(repr, feature.categories))})",
    )
    rows = np.flatnonzero(codes >= 0)
    out[rows, codes[rows]] = 1.0


def _encode_boolean(
    feature: BooleanFeature, raw: pd.Series, out: npt.NDArray[np.float32], found: _Problems
) -> None:
    text = _as_text(raw)
    missing = _missing(raw)
    true = text.isin(feature.true_values).to_numpy(dtype=bool) & ~missing
    false = text.isin(feature.false_values).to_numpy(dtype=bool) & ~missing
    unknown = ~(true | false | missing)
    if feature.missing == "impute":
        out[missing] = 1.0 if feature.impute else 0.0
    else:
        _refuse_missing(feature.name, missing, found)
    expected = ", ".join(map(repr, (*feature.true_values, *feature.false_values)))
    found.of_rows(
        "unknown_boolean", feature.name, unknown,
        lambda m: f"{_quote(text[m], 'value')} not a declared true or false value "
        f"(expected one of {expected})",
    )
    out[true] = 1.0


# --- files ------------------------------------------------------------------------------


def _decode(raw: bytes, found: _Problems) -> str:
    """UTF-8 text of the file (a BOM is dropped); undecodable lines are reported, not fatal."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    bad_lines: list[int] = []
    first_offset = first_byte = -1
    offset = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):  # error path only
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_lines.append(number)
            if first_offset < 0:
                first_offset, first_byte = offset + exc.start, line[exc.start]
        offset += len(line) + 1
    shown = bad_lines[:_MAX_ROWS]
    found.items.append(
        DataProblem(
            "encoding",
            None,
            tuple(n - 1 for n in shown if n > 1),
            len(bad_lines),
            f"{_where(shown, len(bad_lines), 'line')}: not UTF-8 text (first undecodable byte "
            f"0x{first_byte:02x} at byte offset {first_offset}); save the file as UTF-8",
        )
    )
    return raw.decode("utf-8-sig", errors="replace")


def _read(path: Path, found: _Problems) -> tuple[list[str], list[list[str]]] | None:
    """Header and data records of the CSV at ``path``; ``None`` if there is nothing to check."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        found.of_file("unreadable", f"cannot be read ({exc.strerror or exc})")
        return None
    if not raw.strip():
        found.of_file("empty", "file is empty")
        return None
    text = _decode(raw, found)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = list(filter(None, reader))  # blank lines are not rows
    except csv.Error as exc:
        found.of_file("not_csv", f"line {reader.line_num}: not valid CSV ({exc})")
        return None
    if not records:
        found.of_file("empty", "file is empty")
        return None
    return records[0], records[1:]


def _check(path: Path, schema: DataSchema) -> tuple[DataCheck, tuple[FloatArray, FloatArray] | None]:
    found = _Problems(np.zeros(0, dtype=np.int64))
    read = _read(path, found)
    if read is None:
        return DataCheck(path, 0, tuple(found.items)), None
    header, records = read
    width = len(header)
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    ragged = lengths != width
    found.row_numbers = np.arange(1, len(records) + 1)
    if not records:
        found.of_file("empty", "header but no data rows")
    found.of_rows(
        "not_csv", None, ragged,
        lambda m: f"{_quote(pd.Series(lengths[m]), 'field count')} where the header has {width}",
    )
    if ragged.any():
        # The rest of the file is still checked, so one pass reports everything.
        kept = np.flatnonzero(~ragged)
        found.row_numbers = kept + 1
        records = [records[i] for i in kept]
    columns = list(zip(*records)) if records else [() for _ in header]

    def column(i: int) -> pd.Series:
        return pd.Series(columns[i], dtype=object)

    encoded = _encode(schema, header, column, len(records), found)
    return DataCheck(path, len(lengths), tuple(found.items)), encoded


def check_csv(path: str | Path, schema: DataSchema) -> DataCheck:
    """Check an institution's CSV against the schema and report every problem found.

    Never raises for a bad file: an unreadable, empty, non-UTF-8 or malformed file is a
    problem in the returned :class:`DataCheck` like any other.
    """
    check, _ = _check(Path(path), schema)
    return check


def load_csv(path: str | Path, schema: DataSchema) -> tuple[FloatArray, FloatArray]:
    """Read an institution's CSV and encode it, refusing a file that does not fit the schema.

    Columns may come in any order. Returns ``(X float32 [n, n_features], y float32 [n])``.
    Raises :class:`DataFileError` carrying every problem :func:`check_csv` would report.
    """
    path = Path(path)
    check, encoded = _check(path, schema)
    if encoded is None or not check.ok:
        raise DataFileError(path, check.problems)
    return encoded

"""A first draft of a federation's data schema, from a sample CSV.

A consortium agrees on its ``[federation.data]`` table once; typing it by hand for
thirty columns invites mistakes. :func:`draft_schema` reads a sample file (one
institution's, or a synthetic one with the agreed columns) and proposes a type for every
column, the categories it saw, and scaling constants from its rows. It is a draft: the
consortium reviews it (above all the constants, which describe only this sample) before
it goes into the federation file, whose digest then fixes it on the ledger.

Type rules, per column other than the target:

* every present value parses as a number → ``numeric`` (median impute, mean/std scaling);
* two distinct values that read as yes/no, true/false or 1/0 → ``boolean``;
* a distinct integer on every row (a row number, an id) → left out, in ``ignored_columns``;
* otherwise → ``categorical`` over the sorted distinct values, if there are at most
  ``max_categories`` of them; a column with more (free text, ids) is left out and listed
  in ``ignored_columns`` so the consortium decides about it explicitly.

A column with missing cells imputes (numeric: median; boolean: the most frequent value)
or, for categoricals, encodes a missing cell as all zeros; one with none refuses missing
cells later, so a file that suddenly has gaps is noticed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fl.data import (
    MISSING_MARKERS,
    BooleanFeature,
    CategoricalFeature,
    DataFileError,
    DataProblem,
    DataSchema,
    NumericFeature,
    ProblemKind,
    check_csv,
)

__all__ = ["SchemaDraft", "draft_schema"]

_TRUE = ("yes", "true", "1", "y", "t")
_FALSE = ("no", "false", "0", "n", "f")


@dataclass(frozen=True)
class SchemaDraft:
    """The proposed schema and, per column, why it got its type (for the reviewer)."""

    schema: DataSchema
    notes: dict[str, str]


def _problem(kind: ProblemKind, column: str | None, message: str) -> DataProblem:
    return DataProblem(kind=kind, column=column, rows=(), count=0, message=message)


def _six_digits(x: float) -> float:
    # The constants go into the schema's digest: 6 significant digits are stable across
    # summation orders and cost nothing in model quality.
    return float(f"{x:.6g}")


def _boolean_pair(values: list[str]) -> tuple[str, str] | None:
    if len(values) != 2:
        return None
    low = [v.lower() for v in values]
    for true, false in zip(_TRUE, _FALSE):
        if sorted(low) == sorted([true, false]):
            return values[low.index(true)], values[low.index(false)]
    return None


def draft_schema(path: str | Path, target: str, positive_label: str, *, negative_label: str | None = None,
                 max_categories: int = 50) -> SchemaDraft:
    """Propose a :class:`DataSchema` for the CSV at ``path`` with ``target`` as the label.

    ``negative_label`` defaults to the target's other value (the target must then have
    exactly two). Raises :class:`~fl.data.DataFileError` for an unreadable file, an absent
    target or unusable labels.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=list(MISSING_MARKERS))
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataFileError(path, [_problem("unreadable", None, f"cannot be read as a CSV file: {exc}")]) from exc
    if target not in frame.columns:
        raise DataFileError(path, [_problem("missing_column", target, f"no column {target!r} "
                                            f"(columns: {', '.join(map(str, frame.columns))})")])
    labels = sorted(frame[target].dropna().unique())
    if negative_label is None:
        others = [label for label in labels if label != positive_label]
        if positive_label not in labels or len(others) != 1:
            raise DataFileError(path, [_problem("unknown_label", target, f"target {target!r} has values {labels}: "
                                                "name the positive and the negative label")])
        negative_label = others[0]

    features: list[NumericFeature | CategoricalFeature | BooleanFeature] = []
    ignored: list[str] = []
    notes: dict[str, str] = {}
    for name in (str(c) for c in frame.columns if c != target):
        raw = frame[name]
        present = raw.dropna()
        gaps = int(raw.isna().sum())
        numbers = pd.to_numeric(present, errors="coerce")
        distinct = sorted(present.unique())
        pair = _boolean_pair(distinct)
        if pair is not None:
            truthy, falsy = pair
            mode = bool((present == truthy).sum() >= (present == falsy).sum())
            features.append(BooleanFeature(type="boolean", name=name, true_values=(truthy,), false_values=(falsy,),
                                           missing="impute" if gaps else "refuse", impute=mode if gaps else None))
            notes[name] = f"boolean ({truthy}/{falsy}), {gaps} missing"
        elif len(present) == len(raw) > 1 and numbers.notna().all() and len(distinct) == len(raw) \
                and (numbers % 1 == 0).all():
            ignored.append(name)
            notes[name] = "ignored: a distinct integer on every row looks like a row number or an id"
        elif len(present) and numbers.notna().all():
            values = numbers.astype("float64")
            impute = _six_digits(float(values.median())) if gaps else None
            filled = values if impute is None else pd.to_numeric(raw, errors="coerce").fillna(impute)
            spread = float(filled.std(ddof=0))
            scale = _six_digits(spread) if spread > 0 else 1.0
            features.append(NumericFeature(type="numeric", name=name, missing="impute" if gaps else "refuse",
                                           impute=impute, mean=_six_digits(float(filled.mean())), scale=scale))
            notes[name] = f"numeric, {gaps} missing" + ("" if spread > 0 else " (constant in this sample: scale 1)")
            if len(distinct) <= 10 and (numbers % 1 == 0).all():
                notes[name] += f"; only {len(distinct)} distinct integers: codes of a category?"
        elif 0 < len(distinct) <= max_categories:
            features.append(CategoricalFeature(type="categorical", name=name, categories=tuple(distinct),
                                               missing="zeros" if gaps else "refuse"))
            notes[name] = f"categorical, {len(distinct)} categories, {gaps} missing"
        else:
            ignored.append(name)
            notes[name] = f"ignored: {len(distinct)} distinct non-numeric values (more than {max_categories})"
    schema = DataSchema(target=target, positive_label=positive_label, negative_label=negative_label,
                        features=tuple(features), ignored_columns=tuple(ignored))
    check = check_csv(path, schema)
    if not check.ok:  # e.g. labels other than the two named: say so rather than draft a schema it fails
        raise DataFileError(path, check.problems)
    return SchemaDraft(schema, notes)

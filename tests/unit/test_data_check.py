"""Unit tests for checking an institution's CSV: every problem, by kind, row and column."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from fl.data import DataFileError, DataSchema, check_csv, load_csv
from tests.fixtures.datasets import hmda_federation

SCHEMA_TOML = """
[federation.data]
target = "Status"
positive_label = "bad"
negative_label = "good"
ignored_columns = ["rownames"]

[[federation.data.features]]
name = "Income"
type = "numeric"
missing = "impute"
impute = 120.0
mean = 100.0
scale = 50.0

[[federation.data.features]]
name = "Age"
type = "numeric"
missing = "refuse"
mean = 40.0
scale = 10.0

[[federation.data.features]]
name = "Home"
type = "categorical"
categories = ["owner", "rent"]
missing = "zeros"

[[federation.data.features]]
name = "Job"
type = "categorical"
categories = ["fixed", "freelance"]
missing = "refuse"

[[federation.data.features]]
name = "selfemp"
type = "boolean"
true_values = ["yes", "Y"]
false_values = ["no", "N"]
missing = "impute"
impute = false

[[federation.data.features]]
name = "married"
type = "boolean"
true_values = ["yes"]
false_values = ["no"]
missing = "refuse"
"""

HEADER = "rownames,Status,Income,Age,Home,Job,selfemp,married"
GOOD_ROWS = [
    "1,good,150,30,owner,fixed,no,yes",
    "2,bad,50,50,rent,freelance,yes,no",
    "3,good,100,40,owner,fixed,N,no",
    "4,bad,200,20,rent,fixed,Y,yes",
]


@pytest.fixture(scope="module")
def schema() -> DataSchema:
    return DataSchema.model_validate(tomllib.loads(SCHEMA_TOML)["federation"]["data"])


def _csv(tmp_path: Path, *rows: str, header: str = HEADER, name: str = "bank-a.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _with(row: int, column: str, value: str) -> list[str]:
    """GOOD_ROWS with one cell (row 1-based, column by header name) replaced."""
    rows = [r.split(",") for r in GOOD_ROWS]
    rows[row - 1][HEADER.split(",").index(column)] = value
    return [",".join(r) for r in rows]


# --- a clean file -----------------------------------------------------------------------


def test_a_clean_file_checks_ok_and_loads_to_the_declared_encoding(
    tmp_path: Path, schema: DataSchema
) -> None:
    path = _csv(tmp_path, *GOOD_ROWS)

    check = check_csv(path, schema)
    X, y = load_csv(path, schema)

    assert check.ok and check.rows == 4 and check.problems == ()
    assert X.shape == (4, schema.n_features) == (4, 8)
    assert X.dtype == np.float32 and X.flags.c_contiguous
    # Income, Age, Home=owner, Home=rent, Job=fixed, Job=freelance, selfemp, married
    np.testing.assert_allclose(X[0], [1.0, -1.0, 1, 0, 1, 0, 0, 1])
    np.testing.assert_allclose(X[3], [2.0, -2.0, 0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(y, [0, 1, 0, 1])


def test_missing_markers_are_imputed_or_zeroed_where_the_schema_allows_it(
    tmp_path: Path, schema: DataSchema
) -> None:
    path = _csv(tmp_path, "1,good,NA,30,,fixed,,yes", "2,bad,,50,n/a,fixed,null,no")

    X, _ = load_csv(path, schema)

    assert X[0, 0] == X[1, 0] == pytest.approx((120.0 - 100.0) / 50.0)
    assert not X[:, 2:4].any()  # missing Home: all-zero block
    assert not X[:, 6].any()  # missing selfemp: impute = false


def test_columns_in_another_order_and_without_the_ignored_column_load_the_same(
    tmp_path: Path, schema: DataSchema
) -> None:
    reference, _ = load_csv(_csv(tmp_path, *GOOD_ROWS), schema)
    columns = HEADER.split(",")
    order = [7, 5, 3, 1, 2, 4, 6]  # rownames dropped, the rest shuffled
    rows = [",".join(r.split(",")[i] for i in order) for r in GOOD_ROWS]

    X, _ = load_csv(
        _csv(tmp_path, *rows, header=",".join(columns[i] for i in order), name="b.csv"), schema
    )

    np.testing.assert_array_equal(X, reference)


def test_a_utf8_bom_and_windows_line_ends_are_accepted(tmp_path: Path, schema: DataSchema) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([HEADER, *GOOD_ROWS]).encode() + b"\r\n")

    assert check_csv(path, schema).ok
    assert load_csv(path, schema)[0].shape == (4, 8)


# --- each kind of problem ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "kind", "column", "where", "text"),
    [
        (_with(2, "Income", "abc"), "non_numeric", "Income", (2,), "non-numeric value 'abc'"),
        (_with(3, "Income", "1,000"), "not_csv", None, (3,), "field count 9"),
        (_with(1, "Income", "inf"), "non_finite", "Income", (1,), "'inf'"),
        (_with(4, "Income", "1e300"), "non_finite", "Income", (4,), "'1e300'"),
        (_with(2, "Age", ""), "missing_value", "Age", (2,), "missing value"),
        (_with(3, "Home", "boat"), "unknown_category", "Home", (3,), "unknown category 'boat'"),
        (_with(1, "Home", "Owner"), "unknown_category", "Home", (1,), "'Owner'"),
        (_with(4, "Job", "NA"), "missing_value", "Job", (4,), "missing value"),
        (_with(2, "selfemp", "true"), "unknown_boolean", "selfemp", (2,), "value 'true'"),
        (_with(3, "married", ""), "missing_value", "married", (3,), "missing value"),
        (_with(1, "Status", "default"), "unknown_label", "Status", (1,), "unknown label 'default'"),
        (_with(4, "Status", ""), "missing_value", "Status", (4,), "missing label"),
    ],
    ids=[
        "text-in-numeric", "unquoted-comma", "inf", "overflows-float32", "refused-numeric-gap",
        "unknown-category", "category-case", "refused-category-gap", "unknown-boolean",
        "refused-boolean-gap", "unknown-label", "missing-label",
    ],
)
def test_each_bad_cell_is_reported_with_its_kind_column_and_row(
    tmp_path: Path,
    schema: DataSchema,
    rows: list[str],
    kind: str,
    column: str | None,
    where: tuple[int, ...],
    text: str,
) -> None:
    check = check_csv(_csv(tmp_path, *rows), schema)

    assert not check.ok
    assert [(p.kind, p.column, p.rows, p.count) for p in check.problems] == [
        (kind, column, where, len(where))
    ]
    assert text in check.problems[0].message
    assert check.problems[0].message.startswith(f"row {where[0]} (1 row): ")


def test_a_problem_on_several_rows_is_one_problem_naming_the_rows_and_the_count(
    tmp_path: Path, schema: DataSchema
) -> None:
    rows = [*GOOD_ROWS, "5,good,abc,30,owner,fixed,no,no", "6,good,abc,30,owner,fixed,no,no"]
    rows[1] = "2,bad,xyz,50,rent,freelance,yes,no"

    (problem,) = check_csv(_csv(tmp_path, *rows), schema).problems

    assert problem.message == (
        "row 2, 5, 6 (3 rows): column 'Income': non-numeric values 'xyz', 'abc'"
    )
    assert problem.rows == (2, 5, 6) and problem.count == 3


def test_a_problem_on_many_rows_lists_ten_and_counts_them_all(
    tmp_path: Path, schema: DataSchema
) -> None:
    rows = [f"{i},good,150,30,boat,fixed,no,yes" for i in range(1, 251)]

    (problem,) = check_csv(_csv(tmp_path, *rows), schema).problems

    assert problem.rows == tuple(range(1, 11))
    assert problem.count == 250
    assert problem.message.startswith("row 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, … (250 rows): column 'Home'")


def test_every_problem_in_a_file_is_reported_not_just_the_first(
    tmp_path: Path, schema: DataSchema
) -> None:
    header = "Status,Income,Home,Job,selfemp,married,extra,Job"  # no Age; extra; Job twice
    rows = [
        "good,abc,owner,fixed,no,yes,1,fixed",
        "maybe,150,boat,fixed,perhaps,yes,2,fixed",
        "good,150,owner,fixed,no,,3,fixed",
        "bad,150,owner,fixed,no,no,4,fixed,surplus",
    ]

    check = check_csv(_csv(tmp_path, *rows, header=header), schema)

    found = {(p.kind, p.column, p.rows) for p in check.problems}
    assert found == {
        ("missing_column", "Age", ()),
        ("unexpected_column", "extra", ()),
        ("repeated_column", "Job", ()),
        ("not_csv", None, (4,)),
        ("non_numeric", "Income", (1,)),
        ("unknown_label", "Status", (2,)),
        ("unknown_category", "Home", (2,)),
        ("unknown_boolean", "selfemp", (2,)),
        ("missing_value", "married", (3,)),
    }
    assert check.rows == 4
    with pytest.raises(DataFileError) as err:
        load_csv(_csv(tmp_path, *rows, header=header), schema)
    assert err.value.problems == check.problems
    assert str(tmp_path / "bank-a.csv") in str(err.value)


def test_header_problems_name_the_column(tmp_path: Path, schema: DataSchema) -> None:
    header = HEADER.replace("Age", "age") + ","
    rows = [r + "," for r in GOOD_ROWS]

    check = check_csv(_csv(tmp_path, *rows, header=header), schema)

    messages = [p.message for p in check.problems]
    assert messages == [
        "column 'Age': missing",
        "column 'age' (header field 4): not in the schema and not ignored",
        "column '' (header field 9): not in the schema and not ignored",
    ]


def test_a_latin1_file_is_an_encoding_problem_naming_the_line_and_byte(
    tmp_path: Path, schema: DataSchema
) -> None:
    path = tmp_path / "latin1.csv"
    text = "\n".join([HEADER, *_with(3, "Home", "propriétaire")]) + "\n"
    path.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")

    check = check_csv(path, schema)

    encoding = check.problems[0]
    assert (encoding.kind, encoding.rows, encoding.count) == ("encoding", (3,), 1)
    assert encoding.message.startswith("line 4 (1 line): not UTF-8 text")
    assert f"0xe9 at byte offset {offset}" in encoding.message
    # The rest of the file is still checked: the undecodable category is refused too.
    assert [p.kind for p in check.problems[1:]] == ["unknown_category"]
    assert check.problems[1].rows == (3,)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "file is empty"), (b"\n\n  \n", "file is empty"),
     (HEADER.encode() + b"\n", "header but no data rows")],
    ids=["no-bytes", "blank-lines", "header-only"],
)
def test_an_empty_file_is_an_empty_problem(
    tmp_path: Path, schema: DataSchema, content: bytes, message: str
) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)

    check = check_csv(path, schema)

    assert [(p.kind, p.message) for p in check.problems] == [("empty", message)]
    with pytest.raises(DataFileError, match=message):
        load_csv(path, schema)


def test_a_missing_file_is_unreadable_not_an_exception_from_check(
    tmp_path: Path, schema: DataSchema
) -> None:
    check = check_csv(tmp_path / "nope.csv", schema)

    assert [p.kind for p in check.problems] == ["unreadable"]
    with pytest.raises(DataFileError, match="cannot be read"):
        load_csv(tmp_path / "nope.csv", schema)


def test_malformed_quoting_is_a_not_csv_problem_naming_the_line(
    tmp_path: Path, schema: DataSchema
) -> None:
    rows = [*GOOD_ROWS[:2], '3,good,"100"x,40,owner,fixed,no,no']

    (problem,) = check_csv(_csv(tmp_path, *rows), schema).problems

    assert problem.kind == "not_csv"
    assert problem.message.startswith("line 4: not valid CSV")


def test_short_and_long_rows_are_reported_and_the_other_rows_still_checked(
    tmp_path: Path, schema: DataSchema
) -> None:
    rows = [GOOD_ROWS[0], "2,bad,50,50,rent", GOOD_ROWS[2], "4,bad,abc,20,rent,fixed,Y,yes"]

    check = check_csv(_csv(tmp_path, *rows), schema)

    assert [(p.kind, p.rows) for p in check.problems] == [("not_csv", (2,)), ("non_numeric", (4,))]
    assert "field count 5 where the header has 8" in check.problems[0].message


def test_blank_lines_are_skipped_and_not_counted_as_rows(tmp_path: Path, schema: DataSchema) -> None:
    rows = [GOOD_ROWS[0], "", GOOD_ROWS[1], "", "3,good,abc,40,owner,fixed,N,no"]

    check = check_csv(_csv(tmp_path, *rows), schema)

    assert check.rows == 3
    assert [(p.kind, p.rows) for p in check.problems] == [("non_numeric", (3,))]


def test_check_as_dict_is_json_ready(tmp_path: Path, schema: DataSchema) -> None:
    import json

    check = check_csv(_csv(tmp_path, *_with(2, "Home", "boat")), schema)

    payload = json.loads(json.dumps(check.as_dict()))

    assert payload["ok"] is False and payload["rows"] == 4
    assert payload["problems"][0]["kind"] == "unknown_category"
    assert payload["problems"][0]["rows"] == [2]


def test_a_hundred_thousand_row_file_is_checked_in_seconds(tmp_path: Path, schema: DataSchema) -> None:
    rows = GOOD_ROWS * 25_000
    rows[99_998] = "x,good,abc,30,owner,fixed,no,yes"
    path = _csv(tmp_path, *rows)

    started = time.perf_counter()
    check = check_csv(path, schema)
    elapsed = time.perf_counter() - started

    assert [(p.kind, p.rows) for p in check.problems] == [("non_numeric", (99_999,))]
    assert elapsed < 10.0  # a per-row Python loop over 100k rows would take far longer


# --- a second real data set ---------------------------------------------------------------


def test_the_hmda_federation_loads_with_its_declared_schema_and_both_classes_per_part(
    tmp_path: Path,
) -> None:
    fed = hmda_federation(tmp_path, parts=3, seed=5)

    kinds = {f.type for f in fed.schema.features}
    assert kinds == {"numeric", "categorical", "boolean"}
    assert DataSchema.model_validate(fed.table) == fed.schema
    positive_rates = []
    for name, path in fed.paths.items():
        assert check_csv(path, fed.schema).ok, name
        X, y = load_csv(path, fed.schema)
        assert X.shape[1] == fed.schema.n_features and np.isfinite(X).all()
        assert 0 < y.sum() < len(y), name  # both classes
        assert fed.blanked[name] > 0
        positive_rates.append(float(y.mean()))
    assert max(positive_rates) - min(positive_rates) > 0.05  # not IID
    X_val, y_val = load_csv(fed.validation, fed.schema)
    assert len(y_val) == pytest.approx(0.2 * 2380, abs=2)
    assert sum(len(load_csv(p, fed.schema)[1]) for p in fed.paths.values()) + len(y_val) == 2380


def test_the_hmda_federation_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    first = hmda_federation(tmp_path / "a", parts=2, seed=3)
    again = hmda_federation(tmp_path / "b", parts=2, seed=3)

    assert first.schema.digest() == again.schema.digest()
    for name in first.paths:
        assert first.paths[name].read_bytes() == again.paths[name].read_bytes()

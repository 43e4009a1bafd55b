"""Unit tests for fl.data: schema, non-IID split, CSV loading and refusal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fl.data import (
    DataFileError,
    DataMismatchError,
    PreprocessingSchema,
    credit_schema,
    load_credit_frame,
    load_csv,
    load_partition,
    load_test,
    partition_credit,
    write_partitions_csv,
)

NAMES = ["bank-a", "bank-b", "bank-c"]


@pytest.fixture(scope="module")
def schema() -> PreprocessingSchema:
    return credit_schema()


@pytest.fixture
def good_csv(tmp_path: Path) -> Path:
    frame = partition_credit(3, seed=1).partitions[0].head(50)
    path = tmp_path / "bank-a.csv"
    frame.to_csv(path, index=False)
    return path


def _rewrite(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """Apply ``change`` to the CSV's cells (read as text) and write it back."""
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    return path


def _set_cell(row: int, column: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return change


# --- schema -------------------------------------------------------------------------


def test_credit_schema_encodes_the_bundled_data_to_its_declared_width(
    schema: PreprocessingSchema
) -> None:
    X, y = schema.transform(load_credit_frame())

    assert X.shape == (4454, schema.n_features) == (4454, len(schema.feature_names))
    assert X.dtype == np.float32 and X.flags.c_contiguous and np.isfinite(X).all()
    assert int(y.sum()) == 1254  # "bad" applicants are the positive class
    assert X[:, :9].mean(axis=0) == pytest.approx(np.zeros(9), abs=1e-3)  # standardised


def test_schema_digest_is_stable_and_survives_a_json_round_trip(
    schema: PreprocessingSchema
) -> None:
    as_json = json.loads(json.dumps(schema.model_dump(mode="json")))

    rebuilt = PreprocessingSchema.model_validate(as_json)

    assert rebuilt == schema
    assert rebuilt.digest() == schema.digest() == credit_schema().digest()
    assert len(schema.digest()) == 64


def test_schema_digest_changes_when_a_category_changes(schema: PreprocessingSchema) -> None:
    data = schema.model_dump()
    data["categorical"][0]["categories"] = (*data["categorical"][0]["categories"], "boat")

    changed = PreprocessingSchema.model_validate(data)

    assert changed.digest() != schema.digest()
    assert changed.n_features == schema.n_features + 1


def test_schema_digest_changes_when_category_order_changes(schema: PreprocessingSchema) -> None:
    data = schema.model_dump()
    data["categorical"][2]["categories"] = tuple(reversed(data["categorical"][2]["categories"]))

    assert PreprocessingSchema.model_validate(data).digest() != schema.digest()


def test_schema_is_frozen_and_rejects_a_zero_scale(schema: PreprocessingSchema) -> None:
    data = schema.model_dump()
    data["numeric"][0]["scale"] = 0.0

    with pytest.raises(ValidationError):
        PreprocessingSchema.model_validate(data)
    with pytest.raises(ValidationError):
        schema.target = "Other"  # type: ignore[misc]


def test_missing_values_are_imputed_and_unknown_categories_become_all_zero(
    schema: PreprocessingSchema
) -> None:
    row = load_credit_frame().head(1).copy()
    row["Income"] = np.nan
    row["Home"] = "houseboat"
    row["Job"] = np.nan

    X, _ = schema.transform(row)

    income = next(c for c in schema.numeric if c.name == "Income")
    assert X[0, 4] == pytest.approx((income.impute - income.mean) / income.scale)
    home = [i for i, n in enumerate(schema.feature_names) if n.startswith(("Home=", "Job="))]
    assert not X[0, home].any()


# --- split --------------------------------------------------------------------------


def test_same_seed_gives_an_identical_split_and_another_seed_does_not() -> None:
    first, again = partition_credit(3, seed=5), partition_credit(3, seed=5)
    other = partition_credit(3, seed=6)

    for a, b in zip(first.partitions, again.partitions):
        pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(first.test, again.test)
    assert not first.partitions[0].equals(other.partitions[0])


def test_split_uses_every_row_once_and_holds_out_a_stratified_test_set() -> None:
    split = partition_credit(4, seed=0, test_fraction=0.2)

    total = sum(len(p) for p in split.partitions) + len(split.test)
    assert total == 4454
    assert len(split.test) == pytest.approx(0.2 * 4454, abs=1)
    assert (split.test["Status"] == "bad").mean() == pytest.approx(1254 / 4454, abs=0.005)
    every = pd.concat([*split.partitions, split.test])
    everything = load_credit_frame().drop(columns=["rownames"])
    by_all = list(everything.columns)
    # The same multiset of rows (the data holds duplicate rows, so a set would not do).
    pd.testing.assert_frame_equal(
        every.sort_values(by_all).reset_index(drop=True),
        everything.sort_values(by_all).reset_index(drop=True),
    )


def test_label_proportions_differ_across_partitions() -> None:
    split = partition_credit(3, seed=42, alpha=0.5)

    bad_share = [(p["Status"] == "bad").mean() for p in split.partitions]

    assert max(bad_share) - min(bad_share) > 0.3


@pytest.mark.parametrize("seed", range(10))
def test_every_partition_holds_both_classes_even_with_extreme_skew(seed: int) -> None:
    split = partition_credit(10, seed=seed, alpha=0.01, min_per_class=5)

    for part in split.partitions:
        assert part["Status"].value_counts().reindex(["bad", "good"]).min() >= 5


def test_too_many_partitions_for_the_data_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot give"):
        partition_credit(200, seed=0, min_per_class=10)


def test_load_partition_matches_transform_and_returns_a_private_copy(
    schema: PreprocessingSchema
) -> None:
    X, y = load_partition(1, 3, seed=9)
    X[:] = 0.0

    expected, expected_y = schema.transform(partition_credit(3, seed=9).partitions[1])

    np.testing.assert_array_equal(load_partition(1, 3, seed=9)[0], expected)
    np.testing.assert_array_equal(y, expected_y)
    assert load_test(3, seed=9)[0].shape[1] == schema.n_features


# --- CSV ----------------------------------------------------------------------------


def test_written_partitions_load_back_to_the_same_features(
    tmp_path: Path, schema: PreprocessingSchema
) -> None:
    split = partition_credit(3, seed=3)

    paths = write_partitions_csv(split, tmp_path, NAMES)

    assert sorted(paths) == sorted([*NAMES, "test"])
    assert paths["bank-b"].name == "bank-b.csv"
    for frame, name in [*zip(split.partitions, NAMES), (split.test, "test")]:
        X, y = load_csv(paths[name], schema)
        X_ref, y_ref = schema.transform(frame)
        np.testing.assert_array_equal(X, X_ref)
        np.testing.assert_array_equal(y, y_ref)


def test_partition_names_must_be_unique_ids_and_not_test(tmp_path: Path) -> None:
    split = partition_credit(3, seed=3)

    refused = (
        ["bank-a", "bank-a", "bank-c"],  # duplicate
        ["bank-a", "test", "bank-c"],  # would overwrite test.csv
        ["Bank A", "b", "c"],  # not a participant id
        ["a", "b"],  # too few
    )
    for names in refused:
        with pytest.raises(ValueError):
            write_partitions_csv(split, tmp_path, names)


def test_columns_in_another_order_and_an_ignored_rownames_column_are_accepted(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    X_ref, _ = load_csv(good_csv, schema)

    def shuffle(frame: pd.DataFrame) -> pd.DataFrame:
        frame.insert(0, "rownames", [str(i) for i in range(len(frame))])
        return frame[frame.columns[::-1]]

    X, _ = load_csv(_rewrite(good_csv, shuffle), schema)

    np.testing.assert_array_equal(X, X_ref)


def test_csv_with_missing_column_is_refused_naming_the_file(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, lambda f: f.drop(columns=["Income", "Job"]))

    with pytest.raises(DataFileError, match="missing columns: Income, Job") as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)
    assert err.value.path == good_csv


def test_csv_with_unexpected_and_missing_columns_names_both_in_one_error(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, lambda f: f.rename(columns={"Age": "age", "Debt": "SSN"}))

    with pytest.raises(DataFileError) as err:
        load_csv(good_csv, schema)

    message = str(err.value)
    assert str(good_csv) in message
    assert "missing columns: Age, Debt" in message
    assert "unexpected columns: age, SSN" in message


def test_empty_csv_is_refused_naming_the_file(tmp_path: Path, schema: PreprocessingSchema) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")

    with pytest.raises(DataFileError, match="file is empty") as err:
        load_csv(path, schema)

    assert str(path) in str(err.value)


def test_header_only_csv_is_refused_naming_the_file(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    header = good_csv.read_text().splitlines()[0]
    good_csv.write_text(header + "\n")

    with pytest.raises(DataFileError, match="no data rows") as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)


def test_csv_with_unknown_target_labels_is_refused_naming_the_file(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, _set_cell(3, "Status", "default"))

    expected = "unknown labels in target column 'Status': 'default'"
    with pytest.raises(DataFileError, match=expected) as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)


def test_csv_with_a_missing_target_label_is_refused(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, _set_cell(0, "Status", ""))

    with pytest.raises(DataFileError, match="1 missing labels"):
        load_csv(good_csv, schema)


def test_csv_with_text_in_a_numeric_column_is_refused_naming_the_file(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, _set_cell(2, "Amount", "1,000"))

    expected = "non-numeric values in numeric column 'Amount': '1,000'"
    with pytest.raises(DataFileError, match=expected) as err:
        load_csv(good_csv, schema)

    assert str(good_csv) in str(err.value)


def test_missing_csv_file_is_refused_as_a_data_file_error(
    tmp_path: Path, schema: PreprocessingSchema
) -> None:
    with pytest.raises(DataFileError, match="cannot be read"):
        load_csv(tmp_path / "nope.csv", schema)


def test_na_markers_in_a_csv_are_imputed_like_missing_values(
    good_csv: Path, schema: PreprocessingSchema
) -> None:
    _rewrite(good_csv, _set_cell(0, "Income", "NA"))

    X, _ = load_csv(good_csv, schema)

    income = next(c for c in schema.numeric if c.name == "Income")
    assert X[0, 4] == pytest.approx((income.impute - income.mean) / income.scale)


def test_transform_of_a_mismatched_frame_raises_a_mismatch_error_not_a_file_error(
    schema: PreprocessingSchema,
) -> None:
    frame = load_credit_frame().drop(columns=["Status"])

    with pytest.raises(DataMismatchError, match="missing columns: Status") as err:
        schema.transform(frame)

    assert not isinstance(err.value, DataFileError)

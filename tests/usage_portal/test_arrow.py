"""The Arrow arrays the ingestion path builds without pyarrow's pandas check are the arrays
``pa.array`` makes: identifiers, customers and values reach the database unchanged."""

from __future__ import annotations

import pyarrow as pa
import pytest

from usage_portal import arrow


@pytest.mark.parametrize(
    "values",
    [
        ["cus_1", "cus_22", "", "csv_0123456789abcdef_0"],
        ["Zürich", "東京", "plain", ""],  # not ASCII: the builder
        ["a", None, "b"],  # a null
        [],
        [""],
    ],
)
def test_strings_equal_what_pa_array_makes(values: list[str | None]) -> None:
    made = arrow.strings(values)
    made.validate(full=True)
    assert made.equals(pa.array(values, type=pa.string()))
    assert made.to_pylist() == values


def test_int64s_and_text_scalars() -> None:
    assert arrow.int64s([3, -1, 2**40]).to_pylist() == [3, -1, 2**40]
    assert arrow.of([1, 2], pa.int64()).type == pa.int64()
    assert arrow.text("x").as_py() == "x" and arrow.text(None).as_py() is None
    with pytest.raises(TypeError):
        arrow.of([1.5], pa.float64())

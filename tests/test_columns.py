"""provenance.columns: Arrow columns from buffers equal pyarrow's own conversion, nulls and
non-ASCII text included, and bad values are refused by name."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provenance import columns
from provenance.errors import InvalidParameterError


@settings(deadline=None)  # the first pa.array of the process imports pandas
@given(st.lists(st.one_of(st.none(), st.text())))
def test_strings_equal_pyarrow_s_conversion(values):
    built = columns.strings(values)
    assert built.type == pa.string() and built.null_count == values.count(None)
    assert built.equals(pa.array(values, pa.string())) and built.to_pylist() == values
    built.validate(full=True)


@pytest.mark.parametrize("kind", [pa.int8(), pa.int32(), pa.int64(), pa.uint16(), pa.uint64()])
@settings(deadline=None)
@given(data=st.data())
def test_ints_equal_pyarrow_s_conversion(kind, data):
    info = {pa.int8(): (-128, 127), pa.int32(): (-2**31, 2**31 - 1), pa.int64(): (-2**63, 2**63 - 1),
            pa.uint16(): (0, 2**16 - 1), pa.uint64(): (0, 2**64 - 1)}[kind]
    values = data.draw(st.lists(st.one_of(st.none(), st.integers(*info))))
    built = columns.ints(values, kind)
    assert built.type == kind and built.equals(pa.array(values, kind)) and built.to_pylist() == values
    built.validate(full=True)


def test_bad_values_are_refused_by_name():
    with pytest.raises(InvalidParameterError, match="300 is not a int8 value"):
        columns.ints([1, None, 300], pa.int8())
    with pytest.raises(InvalidParameterError, match="'7' is not a int32 value"):
        columns.ints([1, "7"], pa.int32())
    with pytest.raises(InvalidParameterError, match="True is not a int64 value"):
        columns.ints([True])
    with pytest.raises(InvalidParameterError, match="not double"):
        columns.ints([1.0], pa.float64())
    with pytest.raises(InvalidParameterError, match="3 is not a str"):
        columns.strings(["a", 3])
    with pytest.raises(InvalidParameterError, match="not a str that UTF-8 can encode"):
        columns.strings(["\ud800"])


def test_empty_columns():
    assert columns.strings([]).to_pylist() == [] and columns.ints([], pa.int32()).type == pa.int32()

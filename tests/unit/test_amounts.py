"""QNC amounts: exact decimal text <-> integer base units, and every refusal."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qnet.amounts import MAX_AMOUNT, UNITS_PER_QNC, AmountError, format_qnc, parse_qnc, parse_units

units = st.integers(min_value=1, max_value=MAX_AMOUNT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", UNITS_PER_QNC),
        ("12.5", 12_500_000_000),
        ("0.000000001", 1),
        ("1.500000000", 1_500_000_000),  # trailing zeros are not extra precision
        (" 7 ", 7 * UNITS_PER_QNC),
        ("18446744073.709551615", MAX_AMOUNT),
    ],
)
def test_parse_is_exact(text, expected):
    assert parse_qnc(text) == expected


@pytest.mark.parametrize(
    ("units_", "expected"),
    [
        (0, "0"),
        (1, "0.000000001"),
        (12_500_000_000, "12.5"),
        (UNITS_PER_QNC, "1"),
        (MAX_AMOUNT, "18446744073.709551615"),
        (-1, "-0.000000001"),
    ],
)
def test_format_is_exact(units_, expected):
    assert format_qnc(units_) == expected


@given(units)
def test_round_trip(value):
    text = format_qnc(value)
    assert parse_qnc(text) == value
    assert format_qnc(parse_qnc(text)) == text


@given(
    st.integers(min_value=0, max_value=10**12),
    st.text("0123456789", min_size=9, max_size=40),
    st.sampled_from("123456789"),
)
def test_more_than_nine_decimals_is_refused_however_long(whole, middle, last):
    with pytest.raises(AmountError, match="more than 9 decimals"):
        parse_qnc(f"{whole}.{middle}{last}")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("0.0000000001", "more than 9 decimals"),
        ("1.0000000000000000000000000001", "more than 9 decimals"),  # beyond 28 digits
        ("-1", "positive"),
        ("-0.5", "positive"),
        ("0", "positive"),
        ("0.000", "positive"),
        ("18446744073.709551616", "too large"),
        ("1e30", "too large"),
        ("1e999999", "too large|out of range"),
        ("", "not a number"),
        ("abc", "not a number"),
        ("1,5", "not a number"),
        ("1.2.3", "not a number"),
        ("0x10", "not a number"),
        ("NaN", "finite"),
        ("Infinity", "finite"),
    ],
)
def test_refusals(text, why):
    with pytest.raises(AmountError, match=why):
        parse_qnc(text)


def test_parse_units_reads_json_base_units():
    assert parse_units(str(MAX_AMOUNT), "amount") == MAX_AMOUNT


@pytest.mark.parametrize("value", ["-1", "1.5", "", "١٢", 5, str(MAX_AMOUNT + 1)])
def test_parse_units_refusals(value):
    with pytest.raises(AmountError):
        parse_units(value, "amount")

"""Amounts are integers in base units; 1 QNC = 10**9 units. No floats anywhere."""

from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal, DecimalException, InvalidOperation

UNITS_PER_QNC = 10**9
DECIMALS = 9
MAX_AMOUNT = 2**64 - 1  # amounts and fees travel as unsigned 64-bit integers
MAX_SUPPLY = 2**63 - 1  # balances are stored as SQLite INTEGER (signed 64-bit)
MAX_TEXT_LEN = 64
# Enough digits to hold any amount text exactly, and an exponent range that cannot trap
# on the way: the default context rounds to 28 digits and would accept
# '1.0000000000000000000000000001' as 1 QNC.
_EXACT = Context(prec=MAX_TEXT_LEN + DECIMALS, Emax=MAX_EMAX, Emin=MIN_EMIN)


class AmountError(ValueError):
    pass


def parse_qnc(text: str) -> int:
    """'12.5' QNC -> 12_500_000_000 units, exactly; refuses more than 9 decimals."""
    text = text.strip()
    if len(text) > MAX_TEXT_LEN:
        raise AmountError(f"amount longer than {MAX_TEXT_LEN} characters: {text[:20]!r}...")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise AmountError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise AmountError(f"not a finite amount: {text!r}")
    try:
        units = value.scaleb(DECIMALS, _EXACT)
    except DecimalException:
        raise AmountError(f"amount out of range: {text!r}") from None
    if units != units.to_integral_value():
        raise AmountError(f"more than {DECIMALS} decimals: {text!r}")
    if units <= 0:
        raise AmountError(f"amount must be positive: {text!r}")
    if units > MAX_AMOUNT:
        raise AmountError(f"amount too large: {text!r}")
    return int(units)


def format_qnc(units: int) -> str:
    """12_500_000_000 -> '12.5'; exact, never rounded."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_QNC)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:09d}".rstrip("0")


def parse_units(value: object, field: str) -> int:
    """Amounts in JSON are decimal strings of base units (safe beyond 2**53)."""
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise AmountError(f"{field} must be a string of decimal digits (base units)")
    if len(value) > 20 or int(value) > MAX_AMOUNT:
        raise AmountError(f"{field} overflows an unsigned 64-bit integer")
    return int(value)

"""Hourly quotas as operators write them (`250000`, `250 KB`, `1.5 GB`) and as the page shows them.

Units are decimal (SI), as network traffic is counted: 1 KB = 1,000 bytes, 1 MB = 10^6, 1 GB = 10^9,
1 TB = 10^12. The binary units are accepted only when spelled as such (KiB = 1,024, MiB, GiB, TiB).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The contract's column is a BIGINT of bytes per hour.
MAX_QUOTA = 2**63 - 1
MAX_QUOTA_TEXT_LENGTH = 40

UNITS = {
    "": 1, "b": 1, "byte": 1, "bytes": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_QUOTA = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE | re.ASCII)
_DISPLAY_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


class QuotaError(ValueError):
    """The text is not a quota; the message says why, for the operator."""


def parse_quota(text: str) -> int:
    """Bytes per hour from `250000`, `250 KB`, `1.5 GB`, `2 GiB`; a whole, non-negative number of bytes."""
    if len(text) > MAX_QUOTA_TEXT_LENGTH:
        raise QuotaError("too long to be a quota")
    match = _QUOTA.match(text)
    if match is None:
        raise QuotaError("expected a number of bytes, optionally with a unit: 250000, 250 KB, 1.5 GB")
    number, unit = match.groups()
    factor = UNITS.get(unit.lower())
    if factor is None:
        raise QuotaError(f"unknown unit {unit!r}: use B, KB, MB, GB, TB (decimal) or KiB, MiB, GiB, TiB (binary)")
    try:
        value = Decimal(number) * factor
    except InvalidOperation:
        raise QuotaError("not a number") from None
    if value != value.to_integral_value():
        raise QuotaError(f"{text.strip()} is not a whole number of bytes")
    if value > MAX_QUOTA:
        raise QuotaError(f"at most {MAX_QUOTA} bytes (the largest BIGINT)")
    return int(value)


def quota_input_text(value: int) -> str:
    """The text a form shows for `value`: exact (it parses back to `value`), in the value's largest
    decimal unit when that needs at most 3 decimals: `1500000000` -> `1.5 GB`, `1234567` -> `1234567`."""
    for unit, factor in _DISPLAY_UNITS:
        if value >= factor:
            whole, rest = divmod(value, factor)
            if rest % (factor // 1000):
                break
            decimals = f"{rest // (factor // 1000):03d}".rstrip("0")
            return f"{whole}.{decimals} {unit}" if decimals else f"{whole} {unit}"
    return str(value)


def format_bytes(value: int | None) -> str:
    """`1500000000` -> `1.5 GB` (decimal units, at most 3 significant decimals, exact when short)."""
    if value is None:
        return "–"
    for unit, factor in _DISPLAY_UNITS:
        if value >= factor:
            text = f"{value / factor:.3f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{value} B"

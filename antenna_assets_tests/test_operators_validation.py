"""The operators' page's field parsing: quotas (property-based), users, CSV files. Pure Python, no stack."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from antenna_assets.serving.operators.csv_import import parse_users_csv
from antenna_assets.serving.operators.quota import MAX_QUOTA, QuotaError, format_bytes, parse_quota, quota_input_text
from antenna_assets.serving.operators.validation import validate_user

quotas = st.integers(min_value=0, max_value=MAX_QUOTA)


@pytest.mark.parametrize("text,expected", [
    ("250000", 250_000), ("250 KB", 250_000), ("250kb", 250_000), ("1.5 GB", 1_500_000_000), (" 2 MB ", 2_000_000),
    ("1 TB", 10**12), ("0", 0), ("64 KiB", 65_536), ("1.5 GiB", 1_610_612_736), ("12 bytes", 12), (".5 KB", 500),
    (str(MAX_QUOTA), MAX_QUOTA),
])
def test_quota_forms(text, expected):
    assert parse_quota(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5", "0.0001 KB", "1e6", "1,000", "12 parsecs", "GB", "1 GB 2",
                                  str(MAX_QUOTA + 1), "9999999999 TB", "NaN", "∞", "１２", "1" * 50])
def test_quota_refusals(text):
    with pytest.raises(QuotaError):
        parse_quota(text)


@given(quotas)
def test_any_quota_in_bytes_parses_to_itself(value):
    assert parse_quota(str(value)) == value


@given(quotas)
def test_the_forms_quota_text_parses_back_to_the_same_bytes(value):
    # The edit form shows this text: saving an unchanged form must not change the quota.
    assert parse_quota(quota_input_text(value)) == value


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["KB", "MB", "GB", "KiB", "MiB"]))
def test_whole_units_parse_to_their_multiple(number, unit):
    factor = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KiB": 2**10, "MiB": 2**20}[unit]
    assert parse_quota(f"{number} {unit}") == number * factor


@given(st.text(max_size=30))
def test_any_text_is_a_quota_or_a_quota_error(text):
    try:
        value = parse_quota(text)
    except QuotaError:
        return
    assert 0 <= value <= MAX_QUOTA


def test_display():
    assert [format_bytes(v) for v in (None, 0, 999, 5000, 250_000, 1_500_000_000, 1_234_567)] == \
        ["–", "0 B", "999 B", "5 KB", "250 KB", "1.5 GB", "1.235 MB"]
    assert quota_input_text(1_234_567) == "1234567" and quota_input_text(1_500_000_000) == "1.5 GB"


def test_user_validation_collects_every_field():
    user, errors = validate_user({"id": "x", "name": "", "email": "a@b", "quota": "-1"}, generate_id=True)
    assert user is None and set(errors) == {"id", "name", "email", "quota"}
    user, errors = validate_user({"id": "", "name": " ana ", "email": "ana@example.com", "quota": "1 KB"},
                                 generate_id=True)
    assert errors == {} and user.name == "ana" and user.quota == 1000 and len(user.id) == 36


def test_csv_reports_each_bad_row_and_returns_no_users():
    users, errors = parse_users_csv(b"name,email,quota\nana,ana@example.com,1\nbea,bad,1\n,,\ncris,c@example.com,x,9\n")
    assert users == [] and [where for where, _ in errors] == ["line 3", "line 5"]
    users, errors = parse_users_csv("\ufeffname,email,quota\r\nana,ana@example.com,1 KB\r\n".encode())
    assert errors == [] and [(line, u.name, u.quota) for line, u in users] == [(2, "ana", 1000)]

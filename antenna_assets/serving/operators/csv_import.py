"""CSV import of many users: validated as a whole, every bad row reported with why."""

from __future__ import annotations

import csv
import io

from antenna_assets.serving.operators.validation import FIELDS, UserInput, validate_user

MAX_CSV_BYTES = 5_000_000
MAX_CSV_ROWS = 50_000
REQUIRED_COLUMNS = ("name", "email", "quota")  # `id` is optional: empty or absent generates one


def parse_users_csv(data: bytes) -> tuple[list[tuple[int, UserInput]], list[tuple[str, str]]]:
    """(the users with their line numbers, []) when every row is valid, else ([], [(where, why), ...])."""
    if len(data) > MAX_CSV_BYTES:
        return [], [("file", f"larger than {MAX_CSV_BYTES // 1_000_000} MB")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [("file", f"not UTF-8 text (byte {exc.start})")]
    if "\x00" in text:
        return [], [("file", "contains NUL characters: not a text file")]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [column.strip().lower() for column in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        return [], [("header", f"the first line must name the columns id,name,email,quota; missing: {', '.join(missing)}")]
    unknown = [c for c in header if c not in FIELDS]
    if unknown:
        return [], [("header", f"unknown column(s): {', '.join(unknown)}; expected id,name,email,quota")]
    reader.fieldnames = header
    users: list[tuple[int, UserInput]] = []
    errors: list[tuple[str, str]] = []
    seen_ids: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    try:
        for row in reader:
            line = reader.line_num
            if len(users) + len(errors) >= MAX_CSV_ROWS:
                return [], [("file", f"more than {MAX_CSV_ROWS} rows: split it")]
            if None in row:
                errors.append((f"line {line}", f"more than {len(header)} values"))
                continue
            if not any((v or "").strip() for v in row.values()):
                continue  # a blank line
            user, field_errors = validate_user({k: v or "" for k, v in row.items()}, generate_id=True)
            if field_errors:
                errors.append((f"line {line}", "; ".join(f"{k}: {v}" for k, v in field_errors.items())))
                continue
            duplicate = []
            if user.id in seen_ids:
                duplicate.append(f"id also on line {seen_ids[user.id]}")
            if user.email.lower() in seen_emails:
                duplicate.append(f"email also on line {seen_emails[user.email.lower()]}")
            seen_ids.setdefault(user.id, line)
            seen_emails.setdefault(user.email.lower(), line)
            if duplicate:
                errors.append((f"line {line}", "; ".join(duplicate)))
            else:
                users.append((line, user))
    except csv.Error as exc:
        errors.append((f"line {reader.line_num}", f"not valid CSV: {exc}"))
    if not errors and not users:
        errors.append(("file", "no users in it"))
    return ([], errors) if errors else (users, [])

"""Validation of one user as an operator submits it (form or CSV row): each field's problem, by field."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from antenna_assets.serving.operators.quota import QuotaError, parse_quota
from antenna_assets.serving.schema import USER_METADATA

MAX_NAME_LENGTH = 100
MAX_EMAIL_LENGTH = 254  # RFC 5321's limit on a forward path
FIELDS = USER_METADATA.names
# One @, a dot in the domain, no spaces or control characters; deliverability is not our business.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class UserInput:
    id: str
    name: str
    email: str
    quota: int


def validate_user(raw: dict[str, str], generate_id: bool) -> tuple[UserInput | None, dict[str, str]]:
    """(the user, {}) when every field is valid, else (None, {field: message})."""
    errors: dict[str, str] = {}
    user_id = (raw.get("id") or "").strip()
    if not user_id and generate_id:
        user_id = str(uuid.uuid4())
    elif not user_id:
        errors["id"] = "required"
    else:
        if _UUID.match(user_id):
            user_id = user_id.lower()
        else:
            errors["id"] = "not a UUID (like 00000000-0000-0000-0000-000000000021); leave it empty to generate one"
    name = (raw.get("name") or "").strip()
    if not name:
        errors["name"] = "required"
    elif len(name) > MAX_NAME_LENGTH:
        errors["name"] = f"at most {MAX_NAME_LENGTH} characters"
    elif _CONTROL.search(name):
        errors["name"] = "no control characters"
    email = (raw.get("email") or "").strip()
    if not email:
        errors["email"] = "required"
    elif len(email) > MAX_EMAIL_LENGTH:
        errors["email"] = f"at most {MAX_EMAIL_LENGTH} characters"
    elif not _EMAIL.match(email):
        errors["email"] = "not an email address (like name@example.com)"
    quota_text = raw.get("quota") or ""
    quota = None
    if not quota_text.strip():
        errors["quota"] = "required"
    else:
        try:
            quota = parse_quota(quota_text)
        except QuotaError as exc:
            errors["quota"] = str(exc)
    if errors:
        return None, errors
    return UserInput(user_id, name, email, quota), {}

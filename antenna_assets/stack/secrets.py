"""Secrets the stack generates for itself (role passwords, signing keys), one file each under
`<stack dir>/secrets/`, readable by their owner only. Never passed on a command line."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from antenna_assets.settings import Settings


def secrets_dir(settings: Settings) -> Path:
    return settings.stack_dir / "secrets"


def stack_secret(settings: Settings, name: str) -> tuple[str, bool]:
    """The secret `name`, generated on first use; returns (value, created_now) so that the command
    that created it can show it once."""
    folder = secrets_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    path = folder / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    value = secrets.token_urlsafe(24)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value, True


def write_pgpass(settings: Settings, host: str, port: int, passwords: dict[str, str]) -> Path:
    """libpq's password file (mode 0600): a line per role of the server at host:port, lines for other
    servers kept. URLs then name the file (`passfile=`) instead of carrying a password."""
    path = settings.pgpass_file
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def escape(field: str) -> str:
        return field.replace("\\", "\\\\").replace(":", "\\:")

    ours = {f"{escape(host)}:{port}:*:{escape(role)}:" for role in passwords}
    kept = [line for line in (path.read_text().splitlines() if path.exists() else [])
            if not any(line.startswith(prefix) for prefix in ours)]
    lines = kept + [f"{escape(host)}:{port}:*:{escape(role)}:{escape(pw)}" for role, pw in passwords.items()]
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(temporary, path)
    return path

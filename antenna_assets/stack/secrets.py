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

"""Secrets the stack generates for itself (role passwords, signing keys), one file each under
`<stack dir>/secrets/`, readable by their owner only. Never passed on a command line.

Every such file is written whole or not at all: a temporary file created 0600, written, flushed to
disk, then moved into place; so a crash cannot leave an empty or partial secret behind, and a
secret file that is empty or short anyway (edited by hand, a full disk) is refused, not used."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from antenna_assets.errors import StackError
from antenna_assets.settings import Settings

# What `stack_secret` generates is 32 characters; anything this short was not written whole.
MIN_SECRET_LENGTH = 16


def secrets_dir(settings: Settings) -> Path:
    return settings.stack_dir / "secrets"


def _temporary_private_file(path: Path, text: str) -> Path:
    """`text` in a new 0600 file beside `path` (0600 from its creation, never wider), on disk."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _sync_folder(folder: Path) -> None:
    """The folder's entry of a file just moved into it reaches the disk too."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_file(path: Path, text: str) -> None:
    """Replace `path` atomically with an owner-only (0600) file holding `text`."""
    os.replace(_temporary_private_file(path, text), path)
    _sync_folder(path.parent)


def _read_secret(path: Path) -> str:
    value = path.read_text().strip()
    if len(value) < MIN_SECRET_LENGTH:
        raise StackError(f"the secret file {path} is {'empty' if not value else 'too short'} (at least "
                         f"{MIN_SECRET_LENGTH} characters): put the secret back, or delete the file to generate a "
                         "new one")
    return value


def stack_secret(settings: Settings, name: str) -> tuple[str, bool]:
    """The secret `name`, generated on first use; returns (value, created_now) so that the command
    that created it can show it once."""
    folder = secrets_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    path = folder / name
    if path.exists():
        return _read_secret(path), False
    value = secrets.token_urlsafe(24)
    temporary = _temporary_private_file(path, value + "\n")
    try:
        # A hard link, unlike a rename, never replaces: of two processes generating the same secret at
        # once, one value wins and both return it.
        os.link(temporary, path)
        created = True
    except FileExistsError:
        created = False
    finally:
        temporary.unlink()
    _sync_folder(folder)
    return (value, True) if created else (_read_secret(path), False)


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
    write_private_file(path, "\n".join(lines) + "\n")
    return path

"""The stack's secret files and private configuration (README: Where secrets live), and the
serving database's TEMPORARY privilege, on the real embedded server."""

from __future__ import annotations

import os
import stat
import threading

import psycopg2
import pytest

from antenna_assets.errors import StackError
from antenna_assets.postgres import connect
from antenna_assets.settings import WRITER_ROLE
from antenna_assets.stack.secrets import MIN_SECRET_LENGTH, secrets_dir, stack_secret, write_pgpass
from antenna_assets.stack.superset import SECRET_KEY, Superset


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def stack(settings, tmp_path):
    return settings.replace(stack_dir=tmp_path / "stack")


def test_a_generated_secret_is_an_owner_only_file_and_stays(stack):
    value, created = stack_secret(stack, "example-key")
    path = secrets_dir(stack) / "example-key"
    assert created and len(value) >= MIN_SECRET_LENGTH and path.read_text() == value + "\n"
    assert _mode(path) == 0o600 and _mode(secrets_dir(stack)) == 0o700
    assert stack_secret(stack, "example-key") == (value, False)
    assert sorted(p.name for p in secrets_dir(stack).iterdir()) == ["example-key"]  # no temporary file left


def test_processes_generating_one_secret_at_once_agree_on_it(stack):
    results: list[tuple[str, bool]] = []
    start = threading.Barrier(8)

    def generate() -> None:
        start.wait()
        results.append(stack_secret(stack, "raced-key"))

    threads = [threading.Thread(target=generate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({value for value, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert (secrets_dir(stack) / "raced-key").read_text().strip() == results[0][0]


@pytest.mark.parametrize("content,word", [("", "empty"), ("\n", "empty"), ("short\n", "too short")])
def test_an_empty_or_short_secret_file_is_refused_in_one_line(stack, content, word):
    """Before: an empty file (a crash between creating and writing it) was used as the secret."""
    folder = secrets_dir(stack)
    folder.mkdir(parents=True, mode=0o700)
    (folder / "operators-session-key").write_text(content)
    with pytest.raises(StackError) as refused:
        stack_secret(stack, "operators-session-key")
    message = str(refused.value)
    assert word in message and str(folder / "operators-session-key") in message and "\n" not in message
    assert (folder / "operators-session-key").read_text() == content  # left for the person to look at


def test_the_passfile_is_owner_only_even_over_a_wider_one(stack):
    path = stack.pgpass_file
    path.parent.mkdir(parents=True)
    path.write_text("otherhost:5432:*:someone:pw\n")
    os.chmod(path, 0o644)
    write_pgpass(stack, "127.0.0.1", 5432, {"antenna_writer": "s3cret:with\\colon"})
    assert _mode(path) == 0o600
    assert path.read_text() == "otherhost:5432:*:someone:pw\n127.0.0.1:5432:*:antenna_writer:s3cret\\:with\\\\colon\n"


def test_superset_config_is_created_owner_only(stack):
    """Written to a new file created 0600 and moved into place: never readable by others, whatever the
    umask. Before, it was rewritten in place with the umask's mode (0644 over a 0644 file), then chmod-ed."""
    superset = Superset(stack)
    old_umask = os.umask(0)  # the widest a process could create files with
    try:
        superset.write_config("postgresql://antenna_superset@127.0.0.1:5432/superset")
        assert _mode(superset.config_file) == 0o600
        os.chmod(superset.config_file, 0o644)
        inode = superset.config_file.stat().st_ino
        superset.write_config("postgresql://antenna_superset@127.0.0.1:5432/superset2")
    finally:
        os.umask(old_umask)
    # A new file: the 0644 one never held the new text.
    assert _mode(superset.config_file) == 0o600 and superset.config_file.stat().st_ino != inode
    text = superset.config_file.read_text()
    assert "superset2" in text and str(secrets_dir(stack) / SECRET_KEY) in text
    assert [p.name for p in superset.home.iterdir()] == ["superset_config.py"]


def test_no_role_but_the_writer_may_create_temporary_tables_in_the_serving_database(settings, postgres):
    from antenna_assets.serving.roles import ensure_reader_role

    with connect(settings.postgres_admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT has_database_privilege('public', current_database(), 'TEMPORARY'), "
                    "has_database_privilege(%s, current_database(), 'TEMPORARY')", (WRITER_ROLE,))
        assert cur.fetchone() == (False, True)
    reader = ensure_reader_role(settings)
    with connect(reader) as conn, conn.cursor() as cur:
        cur.execute("SET transaction_read_only = off")  # the reader's default; not what is tested here
        with pytest.raises(psycopg2.errors.InsufficientPrivilege, match="permission denied to create temporary"):
            cur.execute("CREATE TEMP TABLE intruder (x INT)")
    with connect(settings.postgres_url) as conn, conn.cursor() as cur:  # the writer's staging tables
        cur.execute("CREATE TEMP TABLE staging (x INT)")
        conn.rollback()

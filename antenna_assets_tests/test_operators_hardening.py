"""The operators' page's defences, over real HTTP (the app served by uvicorn on a loopback port, as
`antenna operators serve` does) on the test stack's PostgreSQL, one fresh database for the module:
revocable sessions with an absolute lifetime, the sign-in limit under parallel requests, request
bodies capped before they are parsed, and an audit the page's own role cannot forge."""

from __future__ import annotations

import re
import socket
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import replace
from typing import Iterator

import httpx
import psycopg2
import pytest
import uvicorn

from antenna_assets.postgres import transaction
from antenna_assets.serving.operators.app import SESSION_COOKIE, create_app
from antenna_assets.serving.operators.auth import add_operator
from antenna_assets.serving.operators.config import PageConfig
from antenna_assets.serving.operators.schema import OPERATORS_ROLE
from antenna_assets.settings import SUPERUSER
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import OPERATOR_PASSWORD as PASSWORD
from antenna_assets_tests.test_operators_http import _antenna

TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
CSV_HEADER = b"id,name,email,quota\n"


@pytest.fixture(autouse=True)
def no_sign_in_attempts(page):
    """Every test from 127.0.0.1: each starts with no attempts counted against the address."""
    _execute(page[0], "DELETE FROM operator_sign_in_attempts")


@contextmanager
def served(config: PageConfig) -> Iterator[str]:
    """The page's app on uvicorn (a thread of this process), on a free loopback port; yields its URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="warning", lifespan="off",
                                           proxy_headers=False, server_header=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def base(page) -> Iterator[str]:
    with served(page[1]) as url:
        yield url


def _query(url: str, sql: str, params=()) -> list[tuple]:
    with closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _execute(url: str, sql: str, params=()) -> None:
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(sql, params)


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(base_url=base_url, follow_redirects=False, timeout=30)


def _token(client: httpx.Client, path: str = "/login") -> str:
    return TOKEN.search(client.get(path).text).group(1)


def _sign_in(client: httpx.Client, name: str = "alice", password: str = PASSWORD) -> httpx.Response:
    return client.post("/login", data={"name": name, "password": password, "csrf_token": _token(client)})


def _signed_in(base_url: str, name: str = "alice", password: str = PASSWORD) -> httpx.Client:
    client = _client(base_url)
    assert _sign_in(client, name, password).status_code == 303
    return client


def _sent_to_sign_in(client: httpx.Client, message: str) -> None:
    response = client.get("/users")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert message in client.get(response.headers["location"]).text


# -- sessions ------------------------------------------------------------------------------

def test_a_new_password_ends_every_session_of_the_operator(page, base):
    url = page[0]
    with transaction(url) as conn:
        add_operator(conn, "olive", PASSWORD)
    laptop, phone, alice = _signed_in(base, "olive"), _signed_in(base, "olive"), _signed_in(base)
    assert laptop.get("/users").status_code == phone.get("/users").status_code == 200
    changed = _antenna(["operators", "password", "olive"], url, "olive's new password\n")
    assert changed.returncode == 0 and "their sessions ended" in changed.stdout, changed.stderr
    assert "olive's new password" not in changed.stdout + changed.stderr
    for client in (laptop, phone):
        _sent_to_sign_in(client, "Your session was ended")
        assert client.get("/users").status_code == 303  # and stays signed out
    assert alice.get("/users").status_code == 200  # other operators' sessions go on
    assert _sign_in(_client(base), "olive").status_code == 401
    assert _signed_in(base, "olive", "olive's new password").get("/users").status_code == 200
    # `add --reset-password` is the same change.
    again = _signed_in(base, "olive", "olive's new password")
    assert _antenna(["operators", "add", "olive", "--reset-password"], url, "olive's third password\n").returncode == 0
    _sent_to_sign_in(again, "Your session was ended")
    for args, stdin, message in ((["operators", "password", "nobody"], "a long enough password\n", "no operator 'nobody'"),
                                 (["operators", "password", "olive"], "short\n", "at least 10 characters")):
        refused = _antenna(args, url, stdin)
        assert refused.returncode == 1 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_removing_an_operator_ends_their_sessions_even_if_the_name_comes_back(page, base):
    url = page[0]
    with transaction(url) as conn:
        add_operator(conn, "ursula", PASSWORD)
    client = _signed_in(base, "ursula")
    cookie = client.cookies[SESSION_COOKIE]
    removed = _antenna(["operators", "remove", "ursula"], url, "")
    assert removed.returncode == 0 and "'ursula' removed" in removed.stdout, removed.stderr
    assert _query(url, "SELECT count(*) FROM operators WHERE name = 'ursula'") == [(0,)]
    _sent_to_sign_in(client, "Your session was ended")
    # A new account of the same name is not the old one: the old cookie stays refused.
    with transaction(url) as conn:
        add_operator(conn, "ursula", PASSWORD)
    stale = _client(base)
    stale.cookies.set(SESSION_COOKIE, cookie)
    assert stale.get("/users").status_code == 303
    refused = _antenna(["operators", "remove", "nobody"], url, "")
    assert refused.returncode == 1 and refused.stderr.strip() == "antenna: error: no operator 'nobody'"


def test_a_session_ends_at_its_absolute_lifetime_however_often_it_is_used(page):
    with served(replace(page[1], session_max_age_seconds=4)) as short:
        client = _signed_in(short)
        signed_in_at = time.monotonic()
        user = PROVISIONED_USERS[0]
        form = {"name": user.name, "email": user.email, "quota": str(user.quota)}
        cookies = set()
        while time.monotonic() - signed_in_at < 2.5:
            # Used all along: a saved form's answer (and the page showing its message) re-signs the cookie.
            saved = client.post(f"/users/{user.id}", data={**form, "csrf_token": _token(client, f"/users/{user.id}")})
            assert saved.status_code == 303 and "Nothing changed" in client.get(f"/users/{user.id}").text
            cookies.add(client.cookies[SESSION_COOKIE])
            time.sleep(0.5)
        assert len(cookies) > 1, "the cookie was not re-signed: this test would not show anything"
        time.sleep(max(0.0, 4.2 - (time.monotonic() - signed_in_at)))
        latest = client.cookies[SESSION_COOKIE]
        _sent_to_sign_in(client, "Your session has expired")
        # The last re-signed cookie, replayed elsewhere, is no younger than the sign-in.
        replayed = _client(short)
        replayed.cookies.set(SESSION_COOKIE, latest)
        assert replayed.get("/users").status_code == 303


# -- sign-in limit -------------------------------------------------------------------------

def _parallel_sign_ins(base_url: str, name: str, password: str, count: int) -> list[int]:
    """`count` sign-ins released at once, each from its own client (session and CSRF token)."""
    clients = [_client(base_url) for _ in range(count)]
    tokens = [_token(client) for client in clients]
    start = threading.Barrier(count)
    statuses: list[int] = []

    def sign_in(client: httpx.Client, token: str) -> None:
        start.wait()
        statuses.append(client.post("/login", data={"name": name, "password": password, "csrf_token": token}).status_code)

    threads = [threading.Thread(target=sign_in, args=pair) for pair in zip(clients, tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return sorted(statuses)


def test_parallel_sign_ins_never_exceed_the_limit(page):
    """Before the attempts were reserved in PostgreSQL, 16 parallel wrong passwords with a limit of 3
    were all checked (16 x 401): each request read the count before any had failed."""
    url, config = page
    with transaction(url) as conn:
        add_operator(conn, "wanda", PASSWORD)
    with served(replace(config, login_attempts=3, login_window_seconds=600)) as limited:
        assert _parallel_sign_ins(limited, "wanda", "wrong password!", 16) == [401] * 3 + [429] * 13
        assert _query(url, "SELECT count(*) FROM operator_sign_in_attempts WHERE key = 'name:wanda'") == [(3,)]
        # The limit holds for the right password too, now.
        assert _sign_in(_client(limited), "wanda").status_code == 429


def test_successful_sign_ins_do_not_count(page, base):
    url, config = page
    with served(replace(config, login_attempts=2)) as limited:
        for _ in range(4):
            assert _sign_in(_client(limited)).status_code == 303
        assert _query(url, "SELECT count(*) FROM operator_sign_in_attempts") == [(0,)]


# -- request bodies ------------------------------------------------------------------------

def _raw(base_url: str, head: str, chunks: list[bytes] = ()) -> tuple[int, dict[str, str], float]:
    """Send a request head and body chunks on a raw connection, then read the answer's status and
    headers; returns them and the seconds it took."""
    host, port = base_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.replace("\n", "\r\n").encode())
        for chunk in chunks:
            conn.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            received = conn.recv(65536)
            assert received, f"connection closed without an answer: {answer!r}"
            answer += received
    status_line, *header_lines = answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines)}
    return int(status_line.split()[1]), headers, time.monotonic() - started


def _chunked(size: int, piece: int = 4096) -> list[bytes]:
    """`size` bytes of a form in HTTP/1.1 chunks, never terminated (the server must stop reading first)."""
    return [f"{min(piece, size - n):x}\r\n".encode() + b"a" * min(piece, size - n) + b"\r\n"
            for n in range(0, size, piece)]


def _head(path: str, length: str, cookie: str = "", content_type: str = "application/x-www-form-urlencoded") -> str:
    framing = f"Content-Length: {length}" if length != "chunked" else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: {content_type}\n{framing}\n"
            + (f"Cookie: {SESSION_COOKIE}={cookie}\n" if cookie else "") + "\n")


def _state(url: str) -> tuple[list[tuple], int]:
    return (_query(url, "SELECT * FROM user_metadata ORDER BY id"),
            _query(url, "SELECT count(*) FROM user_metadata_audit")[0][0])


def test_a_body_over_the_cap_is_refused_before_it_is_read_when_signed_out(page, base):
    config = page[1]
    # Declared too large: answered at once, nothing read (the old page waited for the gigabyte).
    status, headers, seconds = _raw(base, _head("/login", "1000000000"))
    assert status == 413 and headers["connection"] == "close" and seconds < 2
    # Streamed past the cap without a length: reading stops there.
    status, headers, _ = _raw(base, _head("/login", "chunked"), _chunked(config.max_signed_out_body_bytes + 8192))
    assert status == 413 and "frame-ancestors 'none'" in headers["content-security-policy"]
    # A signed-out client cannot have a signed-in's cap: a form of the size a CSV import may have.
    status, _, _ = _raw(base, _head("/users/new", "chunked"), _chunked(config.max_signed_out_body_bytes + 8192))
    assert status == 413
    page_413 = httpx.post(f"{base}/login", content=b"a" * (config.max_signed_out_body_bytes + 1),
                          headers={"content-type": "application/x-www-form-urlencoded"})
    assert page_413.status_code == 413 and "larger than this page accepts" in page_413.text
    # Under the cap, a sign-in works as before.
    assert _sign_in(_client(base)).status_code == 303


def test_a_body_over_the_cap_is_refused_when_signed_in_and_nothing_is_written(page, base):
    url, config = page
    client = _signed_in(base)
    cookie = client.cookies[SESSION_COOKIE]
    before = _state(url)
    boundary = "antennaboundary"
    multipart = f"multipart/form-data; boundary={boundary}"
    status, _, seconds = _raw(base, _head("/import", str(config.max_body_bytes + 1), cookie, multipart))
    assert status == 413 and seconds < 2
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"users.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\n").encode() + CSV_HEADER
    body = [f"{len(part):x}\r\n".encode() + part + b"\r\n", *_chunked(config.max_body_bytes + 8192, piece=65536)]
    status, _, _ = _raw(base, _head("/import", "chunked", cookie, multipart), body)
    assert status == 413
    assert _state(url) == before
    # Signed in, a body above the signed-out cap is read: a CSV import of 1,000 users.
    csv = CSV_HEADER + b"".join(f",user{n},user{n}@example.org,1 GB\n".encode() for n in range(1000))
    assert len(csv) > config.max_signed_out_body_bytes
    imported = client.post("/import", data={"csrf_token": _token(client, "/import")},
                           files={"file": ("users.csv", csv, "text/csv")})
    assert imported.status_code == 303, imported.text
    assert _query(url, "SELECT count(*) FROM user_metadata WHERE email LIKE %s", ("user%@example.org",)) == [(1000,)]


# -- audit ---------------------------------------------------------------------------------

def _audit_rows(url: str, user_id: str) -> list[tuple]:
    return _query(url, "SELECT operator, db_role, field, old_value, new_value FROM user_metadata_audit "
                       "WHERE user_id = %s ORDER BY id", (user_id,))


def test_the_pages_role_cannot_write_the_audit(page):
    with closing(psycopg2.connect(page[1].database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone() == (OPERATORS_ROLE,)
        for sql in ("INSERT INTO user_metadata_audit (operator, user_id, field) VALUES ('alice', 'x', 'quota')",
                    "SELECT nextval('user_metadata_audit_id_seq')"):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(sql)
            conn.rollback()


def test_an_edit_on_the_page_is_one_audit_row_with_its_operator(page, base):
    url = page[0]
    user = PROVISIONED_USERS[7]
    client = _signed_in(base)
    before = len(_audit_rows(url, user.id))
    response = client.post(f"/users/{user.id}", data={"name": user.name, "email": user.email, "quota": "2 GB",
                                                     "csrf_token": _token(client, f"/users/{user.id}")})
    assert response.status_code == 303
    rows = _audit_rows(url, user.id)
    assert rows[before:] == [("alice", OPERATORS_ROLE, "quota", str(user.quota), "2000000000")]
    assert "alice" in client.get(f"/users/{user.id}").text


def test_changes_outside_the_page_are_audited_with_their_role_and_no_operator(page, base):
    url, config = page
    user = PROVISIONED_USERS[8]
    # Provisioning's insert (as the database's owner) is there already, operator unknown.
    assert _audit_rows(url, user.id)[:2] == [(None, SUPERUSER, "created", None, user.id),
                                             (None, SUPERUSER, "name", None, user.name)]
    _execute(url, "UPDATE user_metadata SET quota = 1 WHERE id = %s", (user.id,))
    # The page's role itself, in SQL without naming an operator; then trying to hide a change in a
    # temporary table named like the audit.
    with closing(psycopg2.connect(config.database_url)) as conn, conn, conn.cursor() as cur:
        cur.execute("UPDATE user_metadata SET email = 'moved@example.org' WHERE id = %s", (user.id,))
        cur.execute("CREATE TEMP TABLE user_metadata_audit (LIKE public.user_metadata_audit)")
        cur.execute("SET search_path = pg_temp, public")
        cur.execute("UPDATE user_metadata SET name = 'renamed' WHERE id = %s", (user.id,))
        cur.execute("SELECT count(*) FROM pg_temp.user_metadata_audit")
        assert cur.fetchone() == (0,)
        # Naming an operator without changing anything writes nothing.
        cur.execute("SELECT set_config('antenna.operator', 'mallory', true)")
        cur.execute("UPDATE user_metadata SET name = 'renamed' WHERE id = %s", (user.id,))
    assert _audit_rows(url, user.id)[-3:] == [(None, SUPERUSER, "quota", str(user.quota), "1"),
                                              (None, OPERATORS_ROLE, "email", user.email, "moved@example.org"),
                                              (None, OPERATORS_ROLE, "name", user.name, "renamed")]
    history = _signed_in(base).get(f"/users/{user.id}").text
    assert f"not on this page (database role {OPERATORS_ROLE})" in history

"""The operators' page over HTTP (FastAPI's TestClient on the real app), on the test stack's PostgreSQL,
connected as the page's own role, one fresh database for the module."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg2
import pytest
from fastapi.testclient import TestClient

from antenna_assets.serving.operators.app import SESSION_COOKIE, create_app
from antenna_assets.postgres import transaction
from antenna_assets.serving.operators.auth import add_operator
from antenna_assets.serving.operators.config import PageConfig
from antenna_assets.serving.operators.schema import OPERATORS_ROLE
from antenna_assets.errors import StackError
from antenna_assets.stack.operators_page import OperatorsPage
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import OPERATOR_PASSWORD as PASSWORD

NOW = datetime(2026, 11, 28, 12, 30)  # the page's clock: this hour is 12:00, the last closed one 11:00
ANDRES, PACO, JUAN = (u.id for u in PROVISIONED_USERS[:3])
TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def _client(config: PageConfig, address: str = "10.0.0.1") -> TestClient:
    # https when the cookie is Secure: a client does not send it back over http.
    return TestClient(create_app(config, now=lambda: NOW), follow_redirects=False, client=(address, 50000),
                      base_url="https://testserver" if config.secure_cookie else "http://testserver")


def _token(client: TestClient, path: str = "/login") -> str:
    return TOKEN.search(client.get(path).text).group(1)


def _sign_in(client: TestClient, name: str = "alice", password: str = PASSWORD, next: str = "/users"):
    return client.post("/login", data={"name": name, "password": password, "csrf_token": _token(client), "next": next})


@pytest.fixture
def alice(page) -> TestClient:
    client = _client(page[1])
    assert _sign_in(client).status_code == 303
    return client


def _query(url: str, sql: str, params=()) -> list[tuple]:
    with closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _state(url: str) -> tuple[list[tuple], int]:
    """Everything the page may write: the users and the audit's size."""
    return (_query(url, "SELECT * FROM user_metadata ORDER BY id"),
            _query(url, "SELECT count(*) FROM user_metadata_audit")[0][0])


def _user(url: str, user_id: str):
    rows = _query(url, "SELECT id, name, email, quota FROM user_metadata WHERE id = %s", (user_id,))
    return rows[0] if rows else None


def _audit(url: str, user_id: str) -> list[tuple]:
    """The user's audit rows of changes made on the page (provisioning's have no operator)."""
    return _query(url, "SELECT operator, field, old_value, new_value FROM user_metadata_audit WHERE user_id = %s "
                       "AND operator IS NOT NULL ORDER BY id", (user_id,))


def _edit(client: TestClient, user_id: str, **fields):
    current = dict(zip(("id", "name", "email", "quota"), _user_from_page(client, user_id)))
    data = {"name": current["name"], "email": current["email"], "quota": current["quota"], **fields}
    return client.post(f"/users/{user_id}", data={**data, "csrf_token": _token(client, f"/users/{user_id}")})


def _user_from_page(client: TestClient, user_id: str) -> tuple[str, str, str, str]:
    text = client.get(f"/users/{user_id}").text
    value = lambda field: re.search(rf'name="{field}" value="([^"]*)"', text).group(1)  # noqa: E731
    return user_id, value("name"), value("email"), value("quota")


# -- sign-in, session, CSRF ----------------------------------------------------------------

GET_PAGES = ["/", "/users", "/users?q=andres&sort=quota&dir=desc", "/users/new", f"/users/{ANDRES}",
             f"/users/{ANDRES}/delete", "/import", "/audit", "/alerts"]
POST_PAGES = [("/users/new", {"name": "eve", "email": "eve@example.com", "quota": "1"}),
              (f"/users/{ANDRES}", {"name": "eve", "email": "eve@example.com", "quota": "1"}),
              (f"/users/{ANDRES}/delete", {}), ("/import", {}), ("/logout", {})]


@pytest.mark.parametrize("path", GET_PAGES)
def test_every_page_redirects_to_sign_in_when_signed_out(page, path):
    response = _client(page[1]).get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize("path,data", POST_PAGES)
def test_every_post_redirects_to_sign_in_when_signed_out_and_writes_nothing(page, path, data):
    url, config = page
    client = _client(config)
    before = _state(url)
    # A valid CSRF token of an anonymous session is not a sign-in.
    response = client.post(path, data={**data, "csrf_token": _token(client)})
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert _state(url) == before


@pytest.mark.parametrize("path,data", POST_PAGES)
@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_post_without_a_valid_csrf_token_is_refused(page, alice, path, data, token):
    url = page[0]
    before = _state(url)
    response = alice.post(path, data={**data, **({} if token is None else {"csrf_token": token})})
    assert response.status_code == 403
    assert "security token" in response.text
    assert _state(url) == before


def test_csrf_token_of_another_session_is_refused(page, alice):
    other = _client(page[1])
    _sign_in(other)
    before = _state(page[0])
    response = alice.post(f"/users/{ANDRES}", data={"name": "x", "email": "x@example.com", "quota": "1",
                                                     "csrf_token": _token(other, "/users/new")})
    assert response.status_code == 403 and _state(page[0]) == before


def test_sign_in_rotates_the_session_and_sets_a_hardened_cookie(page):
    client = _client(replace(page[1], secure_cookie=True))
    anonymous_token = _token(client)
    response = _sign_in(client)
    assert response.status_code == 303 and response.headers["location"] == "/users"
    cookie = response.headers["set-cookie"].lower()
    assert f"{SESSION_COOKIE}=" in cookie and "httponly" in cookie and "samesite=lax" in cookie and "secure" in cookie
    assert "secure" not in _sign_in(_client(page[1])).headers["set-cookie"].lower()
    assert _token(client, "/users/new") != anonymous_token
    # Security headers on every page: no script, no framing.
    headers = client.get("/users").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"


def test_a_tampered_session_cookie_is_signed_out(page, alice):
    value = alice.cookies[SESSION_COOKIE]
    forged = _client(page[1])
    payload, _, signature = value.partition(".")
    forged.cookies.set(SESSION_COOKIE, payload + "." + signature[::-1])
    assert forged.get("/users").status_code == 303


def test_sign_out_ends_the_session(alice):
    assert alice.post("/logout", data={"csrf_token": _token(alice, "/users/new")}).status_code == 303
    assert alice.get("/users").status_code == 303


def test_sign_in_goes_back_to_the_page_asked_for_but_never_off_site(page):
    client = _client(page[1])
    assert _sign_in(client, next=f"/users/{PACO}").headers["location"] == f"/users/{PACO}"
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        assert _sign_in(_client(page[1]), next=target).headers["location"] == "/users"


def test_wrong_password_is_refused_then_sign_in_is_rate_limited(page):
    # The counts are the database's: another operator than alice, whom the other tests sign in.
    url, config = page
    with transaction(url) as conn:
        add_operator(conn, "rita", PASSWORD)
    config = replace(config, login_attempts=3, login_window_seconds=600)
    app_client = _client(config, address="10.0.0.7")
    for _ in range(3):
        response = _sign_in(app_client, name="rita", password="wrong password!")
        assert response.status_code == 401 and "Wrong operator name or password" in response.text
        assert SESSION_COOKIE not in app_client.cookies or app_client.get("/users").status_code == 303
    # Now even the right password is refused for this name, from any address...
    limited = _sign_in(app_client, name="rita")
    assert limited.status_code == 429 and 590 <= int(limited.headers["retry-after"]) <= 600
    # ...(other address, same name; and another process of the page: the counts are in PostgreSQL)
    other_address = _client(config, address="10.0.0.8")
    assert _sign_in(other_address, name="rita").status_code == 429
    assert _sign_in(other_address).status_code == 303  # alice, from there


def test_sign_in_is_rate_limited_per_client_address(page):
    client = _client(replace(page[1], login_attempts=3), address="10.0.0.9")
    for name in ("mallory1", "mallory2", "mallory3"):  # unknown names: refused like a wrong password
        assert _sign_in(client, name=name).status_code == 401
    # alice's right password from the same address, without counting against her name
    assert _sign_in(client).status_code == 429
    assert _query(page[0], "SELECT count(*) FROM operator_sign_in_attempts WHERE key = 'name:alice'") == [(0,)]


# -- users ---------------------------------------------------------------------------------

def test_users_list_searches_and_sorts(alice):
    text = alice.get("/users").text
    assert all(u.email in text for u in PROVISIONED_USERS) and "20 user(s)" in text
    found = alice.get("/users", params={"q": "ANDR"}).text
    assert "andres@gmail.com" in found and "paco@gmail.com" not in found and "1 user(s)" in found
    by_quota = alice.get("/users", params={"sort": "quota", "dir": "desc"}).text
    emails = re.findall(r"<td>([a-z]+@gmail\.com)</td>", by_quota)
    quotas = {u.email: u.quota for u in PROVISIONED_USERS}
    assert [quotas[e] for e in emails] == sorted(quotas.values(), reverse=True)
    # Unknown sort keys fall back to the id; LIKE's wildcards are searched literally.
    assert alice.get("/users", params={"sort": "quota; DROP TABLE x", "q": "%"}).status_code == 200
    assert "No user matches" in alice.get("/users", params={"q": "%"}).text


def test_users_list_and_user_page_show_usage_against_the_quota(page, alice):
    url = page[0]
    luis = PROVISIONED_USERS[5]  # quota 200 KB; no other test changes him
    hour, previous = NOW.replace(minute=0), NOW.replace(minute=0) - timedelta(hours=1)
    assert _query(url, "SELECT to_regclass('serving_user_1h') IS NOT NULL")[0][0], \
        "serving_user_1h is missing: the serving layer's migration creates it"
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        # The last closed hour: 12 five-minute sums of the speed layer and the batch layer's hour (300 KB);
        # this hour so far: two five-minute sums (50 KB).
        for n in range(12):
            cur.execute("INSERT INTO bytes_agg_user VALUES (%s, %s, 25000)", (luis.id, previous + timedelta(minutes=5 * n)))
        cur.execute("INSERT INTO bytes_agg_user_1h VALUES (%s, %s, 300000)", (luis.email, previous))
        cur.execute("INSERT INTO bytes_agg_user VALUES (%s, %s, 20000), (%s, %s, 30000)",
                    (luis.id, hour, luis.id, hour + timedelta(minutes=5)))
    served = dict(_query(url, "SELECT date, sum_user_bytes FROM serving_user_1h WHERE email = %s", (luis.email,)))
    assert served == {previous: 300_000, hour: 50_000}
    row = re.search(rf"<td>{luis.email}</td>(.*?)</tr>", alice.get("/users", params={"q": "luis"}).text, re.S).group(1)
    this_hour, last_hour = re.findall(r'<td class="num (over|under)"[^>]*>\s*([^<]*)</td>', row)
    assert this_hour == ("under", "50 KB ✓") and last_hour == ("over", "300 KB ▲ over")
    assert "300,000 bytes, so far (speed layer" in row  # no batch run marked that hour final
    by_last_hour = alice.get("/users", params={"sort": "last_hour", "dir": "desc"}).text
    assert re.findall(r"<td>([^<]+@gmail\.com)</td>", by_last_hour)[0] == luis.email
    chart = alice.get(f"/users/{luis.id}").text
    assert len(re.findall(r'<rect class="bar over"', chart)) == 1 and len(re.findall(r'<rect class="bar', chart)) == 24
    assert "300 KB (over quota)" in chart


def test_quota_change_in_gb_is_stored_in_bytes_with_its_audit_row(page, alice):
    url = page[0]
    response = _edit(alice, PACO, quota="1.5 GB")
    assert response.status_code == 303 and response.headers["location"] == f"/users/{PACO}"
    assert _user(url, PACO)[3] == 1_500_000_000
    assert _audit(url, PACO) == [("alice", "quota", "300000", "1500000000")]
    # Audit row and change share one transaction: their times are the transaction's.
    changed_at = _query(url, "SELECT changed_at FROM user_metadata_audit WHERE user_id = %s", (PACO,))[0][0]
    assert abs(changed_at - datetime.utcnow()) < timedelta(minutes=1)
    detail = alice.get(f"/users/{PACO}").text
    assert 'value="1.5 GB"' in detail and "1500000000" in detail and "Saved 1 change(s)" in detail
    assert "1.5 GB" in alice.get("/users", params={"q": "paco"}).text
    assert "1500000000" in alice.get("/audit").text
    # Saving the unchanged form writes nothing.
    _edit(alice, PACO)
    assert len(_audit(url, PACO)) == 1


BAD_FIELDS = [
    ("email", "not-an-email", "not an email address"),
    ("email", "a b@example.com", "not an email address"),
    ("email", "paco@gmail.com", "already the email of user"),  # another user's
    ("email", "x" * 250 + "@ex.com", "at most 254"),
    ("quota", "-5", "expected a number of bytes"),
    ("quota", "1.5", "not a whole number of bytes"),
    ("quota", "12 parsecs", "unknown unit"),
    ("quota", "10000000000 TB", "at most 9223372036854775807"),
    ("quota", "", "required"),
    ("name", "", "required"),
    ("name", "n" * 101, "at most 100 characters"),
    ("name", "bell\x07", "no control characters"),
]


@pytest.mark.parametrize("field,value,message", BAD_FIELDS)
def test_invalid_field_is_shown_beside_the_field_and_nothing_is_written(page, alice, field, value, message):
    url = page[0]
    before = _state(url)
    response = _edit(alice, JUAN, **{field: value})
    assert response.status_code == 422
    assert re.search(rf'id="{field}-error">[^<]*{re.escape(message)}', response.text), response.text
    assert "Traceback" not in response.text
    assert _state(url) == before


def test_add_user_with_a_generated_or_given_id_and_reject_a_bad_one(page, alice):
    url = page[0]
    token = _token(alice, "/users/new")
    response = alice.post("/users/new", data={"csrf_token": token, "id": "", "name": "nuria",
                                              "email": "nuria@example.com", "quota": "250 KB"})
    assert response.status_code == 303
    new_id = response.headers["location"].rsplit("/", 1)[1]
    assert _user(url, new_id) == (new_id, "nuria", "nuria@example.com", 250_000)
    assert [r[1] for r in _audit(url, new_id)] == ["created", "name", "email", "quota"]
    given = "0000AAAA-0000-0000-0000-000000000099"
    assert alice.post("/users/new", data={"csrf_token": token, "id": given, "name": "olga", "email": "olga@example.com",
                                          "quota": "250000"}).status_code == 303
    assert _user(url, given.lower())[1] == "olga"
    before = _state(url)
    for bad_id, message in (("not-a-uuid", "not a UUID"), (given, "already exists"), (ANDRES + "0", "not a UUID")):
        response = alice.post("/users/new", data={"csrf_token": token, "id": bad_id, "name": "p",
                                                  "email": "p@example.com", "quota": "1"})
        assert response.status_code == 422 and re.search(rf'id="id-error">[^<]*{message}', response.text)
    assert _state(url) == before


def test_remove_user_asks_first_then_audits(page, alice):
    url = page[0]
    victim = PROVISIONED_USERS[19].id
    confirmation = alice.get(f"/users/{victim}/delete").text
    assert "traffic will count as unknown from then on" in confirmation and _user(url, victim) is not None
    response = alice.post(f"/users/{victim}/delete", data={"csrf_token": _token(alice, "/users/new")})
    assert response.status_code == 303 and _user(url, victim) is None
    assert _audit(url, victim) == [("alice", "deleted", victim, None), ("alice", "name", "emilio", None),
                                   ("alice", "email", "emilio@gmail.com", None), ("alice", "quota", "200000", None)]
    assert alice.get(f"/users/{victim}").status_code == 404


def test_sql_and_html_looking_input_is_stored_and_shown_literally(page, alice):
    url = page[0]
    name = "Robert'); DROP TABLE user_metadata;-- <script>alert(1)</script>"
    email = "o'hara+x@example.com"
    assert _edit(alice, ANDRES, name=name, email=email).status_code == 303
    assert _user(url, ANDRES)[1:3] == (name, email)
    text = alice.get(f"/users/{ANDRES}").text
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "No user matches" in alice.get("/users", params={"q": "' OR '1'='1"}).text
    assert _query(url, "SELECT count(*) FROM user_metadata")[0][0] >= 19


def test_unknown_user_is_a_404_page(alice):
    response = alice.get("/users/00000000-0000-0000-0000-00000000ffff")
    assert response.status_code == 404 and "No user with this id" in response.text


# -- CSV import ----------------------------------------------------------------------------

def _import(client: TestClient, content: bytes):
    return client.post("/import", data={"csrf_token": _token(client, "/import")},
                       files={"file": ("users.csv", content, "text/csv")})


def test_a_bad_csv_writes_nothing_and_lists_each_bad_row(page, alice):
    url = page[0]
    before = _state(url)
    content = ("id,name,email,quota\n"
               ",ana,ana@example.com,1 GB\n"                 # line 2: good
               "nope,bea,bea@example.com,1000\n"             # line 3: id
               ",cris,cris-at-example.com,1000\n"            # line 4: email
               ",dani,dani@example.com,lots\n"               # line 5: quota
               ",eva,ana@example.com,5\n"                    # line 6: email repeated from line 2
               f"{ANDRES},andres,juan@gmail.com,5\n").encode()  # line 7: another user's email
    response = _import(alice, content)
    assert response.status_code == 422 and "Nothing was imported" in response.text
    for line, why in ((3, "not a UUID"), (4, "not an email address"), (5, "expected a number of bytes"),
                      (6, "email also on line 2")):
        assert re.search(rf"<td>line {line}</td><td>[^<]*{why}", response.text), (line, why)
    assert "<td>line 2</td>" not in response.text and "<td>line 7</td>" not in response.text
    assert _state(url) == before
    # The table's own conflicts (another user's email) are found once every row is valid, and refused too.
    response = _import(alice, f"id,name,email,quota\n{ANDRES},andres,juan@gmail.com,5\n".encode())
    assert response.status_code == 422 and re.search(r"<td>line 2</td><td>email: already the email of user", response.text)
    for bad, why in ((b"\xff\xfe,,", "not UTF-8"), (b"name,email\nx,y\n", "missing: quota"), (b"", "missing"),
                     (b"name,email,quota,secret\n", "unknown column")):
        response = _import(alice, bad)
        assert response.status_code == 422 and why in response.text, bad
    assert _state(url) == before


def test_a_good_csv_adds_and_changes_users_with_audit_rows(page, alice):
    url = page[0]
    juan = _user(url, JUAN)
    content = f"name,email,quota,id\nzoe,zoe@example.com,2.5 MB,\n{juan[1]},{juan[2]},64 KiB,{JUAN}\n".encode()
    response = _import(alice, content)
    assert response.status_code == 303
    assert _user(url, JUAN)[3] == 65536
    zoe = _query(url, "SELECT id, quota FROM user_metadata WHERE email = 'zoe@example.com'")
    assert len(zoe) == 1 and zoe[0][1] == 2_500_000
    assert _audit(url, JUAN)[-1] == ("alice", "quota", str(juan[3]), "65536")
    assert "1 user(s) added, 1 changed" in alice.get("/users").text


# -- the database role ---------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "INSERT INTO bytes_agg_user (id, date, sum_user_bytes) VALUES ('x', now(), 1)",
    "DELETE FROM bytes_agg_user_1h",
    "UPDATE users_over_quota_1h SET quota = 0",
    "INSERT INTO user_metadata_hourly SELECT now(), id, name, email, quota FROM user_metadata",
    "INSERT INTO operators (name, password_hash) VALUES ('eve', 'x')",
    "INSERT INTO user_metadata_audit (operator, user_id, field) VALUES ('alice', 'x', 'quota')",
    "UPDATE operators SET password_hash = 'x'",
    "UPDATE user_metadata_audit SET new_value = 'x'",
    "DELETE FROM user_metadata_audit",
    "TRUNCATE user_metadata_audit",
    "CREATE TABLE eve (x int)",
    "SELECT * FROM dead_letter",
    "UPDATE alerts SET state = 'sent'",
    "SELECT * FROM alert_conditions",
])
def test_the_pages_role_cannot_touch_other_tables(page, sql):
    with closing(psycopg2.connect(page[1].database_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user")
        assert cur.fetchone()[0] == OPERATORS_ROLE
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(sql)


def test_the_audit_is_append_only_even_for_the_owner(page, alice):
    _edit(alice, PACO, name="paco2")
    with closing(psycopg2.connect(page[0])) as conn, conn.cursor() as cur:
        for sql in ("UPDATE user_metadata_audit SET new_value = 'x'", "DELETE FROM user_metadata_audit",
                    "TRUNCATE user_metadata_audit"):
            with pytest.raises(psycopg2.errors.RaiseException, match="append-only"):
                cur.execute(sql)
            conn.rollback()


def test_database_outage_is_a_page_without_a_trace(page):
    client = _client(page[1])
    _sign_in(client)
    broken = TestClient(create_app(replace(page[1], database_url="postgresql://x:y@127.0.0.1:1/none")),
                        follow_redirects=False, cookies=client.cookies)
    response = broken.get("/users")
    assert response.status_code == 503 and "nothing was saved" in response.text and "Traceback" not in response.text


def test_health_needs_no_sign_in(page):
    assert _client(page[1]).get("/healthz").text == "ok"


# -- command line and service --------------------------------------------------------------

def _antenna(args: list[str], url: str, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ANTENNA_POSTGRES_URL": url}
    return subprocess.run([sys.executable, "-m", "antenna_assets.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=60)


def test_operators_add_reads_the_password_from_stdin_and_stores_an_argon2_hash(page):
    url, config = page
    created = _antenna(["operators", "add", "carol"], url, "carol's long password\n")
    assert created.returncode == 0 and "operator 'carol' created" in created.stdout
    stored = _query(url, "SELECT password_hash FROM operators WHERE name = 'carol'")[0][0]
    assert stored.startswith("$argon2id$") and "carol's long password" not in stored
    assert _sign_in(_client(config), "carol", "carol's long password").status_code == 303
    for args, stdin, message in ((["operators", "add", "carol"], "another long password\n", "already exists"),
                                 (["operators", "add", "dave"], "short\n", "at least 10 characters"),
                                 (["operators", "add", " "], "a long enough password\n", "operator name")):
        refused = _antenna(args, url, stdin)
        assert refused.returncode == 1 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    reset = _antenna(["operators", "add", "carol", "--reset-password"], url, "carol's new password\n")
    assert reset.returncode == 0 and _sign_in(_client(config), "carol", "carol's new password").status_code == 303


def test_page_service_reports_a_port_in_use_in_one_line(settings, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        service = OperatorsPage(settings.replace(operators_port=busy.getsockname()[1], stack_dir=tmp_path))
        with pytest.raises(StackError, match=r"^port \d+ is already in use: .*ANTENNA_OPERATORS_PORT$"):
            service.up()
    assert service.status() == (False, "operators page: not running")


def test_an_unexpected_error_is_a_page_without_a_trace(page, alice):
    url, config = page
    client = TestClient(alice.app, follow_redirects=False, raise_server_exceptions=False, cookies=alice.cookies)
    with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
        cur.execute(f"REVOKE SELECT ON serving_user_1h FROM {OPERATORS_ROLE}")
    try:
        response = client.get("/users")
    finally:
        with closing(psycopg2.connect(url)) as conn, conn, conn.cursor() as cur:
            cur.execute(f"GRANT SELECT ON serving_user_1h TO {OPERATORS_ROLE}")
    assert response.status_code == 500 and "Something went wrong; nothing was saved" in response.text
    assert "Traceback" not in response.text and "permission denied" not in response.text

"""The operators' web application: FastAPI routes rendering Jinja2 templates (no JavaScript).

Every page but sign-in and /healthz needs a signed-in operator (else a redirect to /login): a session
younger than its absolute lifetime whose generation is still the operator's in PostgreSQL (a new
password or a removed operator ends it). Every POST carries the session's CSRF token (else 403);
every request body is capped before it is parsed (413). Handlers are plain functions, so FastAPI
runs them in its thread pool and psycopg2's blocking calls never stall the event loop.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode

import psycopg2
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from antenna_assets.errors import StackError
from antenna_assets.postgres import transaction
from antenna_assets.serving.operators import store
from antenna_assets.serving.operators.alerts import ALERTS_LIMIT, alerts_available, recent_alerts
from antenna_assets.serving.operators.auth import (release_sign_in, reserve_sign_in, session_generation, sign_in_keys,
                                                   verify_operator)
from antenna_assets.serving.operators.body_limit import BodySizeLimit
from antenna_assets.serving.operators.config import PageConfig
from antenna_assets.serving.operators.csv_import import MAX_CSV_BYTES, parse_users_csv
from antenna_assets.serving.operators.quota import format_bytes, quota_input_text
from antenna_assets.serving.operators.validation import MAX_NAME_LENGTH, validate_user
from antenna_assets.hours import utc_now

log = logging.getLogger("antenna.operators")
SESSION_COOKIE = "antenna_operators_session"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
TEMPLATES.env.filters["bytes"] = format_bytes
TEMPLATES.env.globals["MAX_NAME_LENGTH"] = MAX_NAME_LENGTH
# No script at all; styles inline; forms post only here; never framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequired(Exception):
    """`reason`: why a session that was signed in is not any more (shown on the sign-in page)."""

    def __init__(self, reason: str | None = None):
        super().__init__(reason)
        self.reason = reason


class CsrfRefused(Exception):
    pass


def create_app(config: PageConfig, now: Callable[[], datetime] = utc_now) -> FastAPI:
    app = FastAPI(title="antenna operators", docs_url=None, redoc_url=None, openapi_url=None)
    # Added before the session middleware, so it runs inside it and sees whether the session is signed in.
    app.add_middleware(BodySizeLimit, refusal=body_too_large,
                       limit=lambda scope: config.max_body_bytes if scope["session"].get("operator")
                       else config.max_signed_out_body_bytes)
    app.add_middleware(SessionMiddleware, secret_key=config.session_secret, session_cookie=SESSION_COOKIE,
                       max_age=config.session_max_age_seconds, same_site="lax", https_only=config.secure_cookie)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    def operator(request: Request) -> str:
        """The signed-in operator's name; checked against PostgreSQL on every request."""
        name = request.session.get("operator")
        if not name:
            raise SignInRequired()
        issued = request.session.get("issued")
        # The issue time is never refreshed: a cookie re-signed on every answer does not live longer.
        if not isinstance(issued, int) or not 0 <= time.time() - issued < config.session_max_age_seconds:
            raise SignInRequired("Your session has expired: sign in again.")
        with transaction(config.database_url) as conn:
            current = session_generation(conn, name)
        if current is None or current != request.session.get("generation"):
            raise SignInRequired("Your session was ended (your password changed or your account was removed): "
                                 "sign in again.")
        return name

    def check_csrf(request: Request, token: str) -> None:
        expected = request.session.get("csrf")
        if not expected or not secrets.compare_digest(expected.encode(), token.encode()):
            raise CsrfRefused()

    def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        context.update(operator=request.session.get("operator"), csrf_token=csrf_token(request),
                       flash=request.session.pop("flash", None))
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)

    def done(request: Request, message: str, to: str) -> RedirectResponse:
        request.session["flash"] = message
        return RedirectResponse(to, status_code=303)

    @app.exception_handler(SignInRequired)
    def _sign_in(request: Request, exc: SignInRequired):
        if exc.reason:
            request.session.clear()
            request.session["flash"] = exc.reason
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @app.exception_handler(CsrfRefused)
    def _csrf(request: Request, exc: CsrfRefused):
        return render(request, "error.html", 403, title="Refused",
                      message="The form's security token is missing or stale: reload the page and submit again.")

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException):
        title = "Not found" if exc.status_code == 404 else "Refused"
        return render(request, "error.html", exc.status_code, title=title, message=str(exc.detail))

    # StackError: `postgres.connect` could not reach the server; OperationalError: lost mid-request.
    @app.exception_handler(StackError)
    @app.exception_handler(psycopg2.OperationalError)
    def _database(request: Request, exc: Exception):
        log.error("database unavailable: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return render(request, "error.html", 503, title="Database unavailable",
                      message="PostgreSQL does not answer; nothing was saved. Try again in a moment.")

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception):
        # Starlette calls this outside the session middleware: no session here, and no trace shown.
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        context = {"operator": None, "csrf_token": "", "flash": None, "title": "Error",
                   "message": "Something went wrong; nothing was saved. The server's log has the details."}
        return TEMPLATES.TemplateResponse(request, "error.html", context, status_code=500, headers=SECURITY_HEADERS)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/")
    def home(request: Request):
        operator(request)
        return RedirectResponse("/users", status_code=303)

    # -- sign-in ---------------------------------------------------------------------------
    def safe_next(target: str) -> str:
        # Only a path on this site: never an open redirect.
        return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/users"

    @app.get("/login")
    def login_page(request: Request, next: str = "/users"):
        return render(request, "login.html", next=safe_next(next), name="", error=None)

    @app.post("/login")
    def login(request: Request, name: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
              next: str = Form("/users")):
        check_csrf(request, csrf_token)
        address = request.client.host if request.client else "unknown"
        # Reserved (and committed) before the password is checked: parallel requests cannot overtake the limit.
        with transaction(config.database_url) as conn:
            reserved, wait = reserve_sign_in(conn, sign_in_keys(name, address), config.login_attempts,
                                             config.login_window_seconds)
        if wait:
            response = render(request, "login.html", 429, next=safe_next(next), name=name,
                              error=f"Too many failed sign-ins: try again in {wait} seconds.")
            response.headers["Retry-After"] = str(wait)
            return response
        with transaction(config.database_url) as conn:
            generation = verify_operator(conn, name, password) if name and len(name) <= 200 else None
            if generation is not None:
                release_sign_in(conn, reserved)
        if generation is None:
            log.warning("failed sign-in for %r from %s", name[:64], address)
            return render(request, "login.html", 401, next=safe_next(next), name=name,
                          error="Wrong operator name or password.")
        request.session.clear()  # a new session (and CSRF token) at each sign-in
        request.session.update(operator=name, generation=generation, issued=int(time.time()),
                               csrf=secrets.token_urlsafe(32))
        log.info("operator %r signed in from %s", name, address)
        return RedirectResponse(safe_next(next), status_code=303)

    @app.post("/logout")
    def logout(request: Request, csrf_token: str = Form("")):
        operator(request)
        check_csrf(request, csrf_token)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # -- users -----------------------------------------------------------------------------
    @app.get("/users")
    def users(request: Request, q: str = "", sort: str = "id", dir: str = "asc"):
        operator(request)
        sort = sort if sort in store.SORTS else "id"
        with transaction(config.database_url) as conn:
            usage = store.usage_available(conn)
            rows, total = store.list_users(conn, now(), q.strip()[:200], sort, dir == "desc", usage=usage)
        return render(request, "users.html", users=rows, total=total, q=q, sort=sort, dir=dir,
                      hour=store.current_hour(now()), previous_hour=store.current_hour(now()) - timedelta(hours=1),
                      limit=store.LIST_LIMIT, usage=usage)

    def user_form(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
        context.setdefault("errors", {})
        return render(request, template, status_code, **context)

    @app.get("/users/new")
    def new_user_page(request: Request):
        operator(request)
        return user_form(request, "user_new.html", values={"id": "", "name": "", "email": "", "quota": ""})

    @app.post("/users/new")
    def new_user(request: Request, csrf_token: str = Form(""), id: str = Form(""), name: str = Form(""),
                 email: str = Form(""), quota: str = Form("")):
        who = operator(request)
        check_csrf(request, csrf_token)
        values = {"id": id, "name": name, "email": email, "quota": quota}
        user, errors = validate_user(values, generate_id=True)
        if user is not None:
            try:
                with transaction(config.database_url) as conn:
                    store.create_user(conn, who, user)
            except store.ChangeRefused as refused:
                errors = refused.errors
        if errors:
            return user_form(request, "user_new.html", 422, values=values, errors=errors)
        return done(request, f"User {user.name} ({user.id}) added.", f"/users/{user.id}")

    def user_page(request: Request, user: store.UserRow, status_code: int = 200, **context) -> HTMLResponse:
        with transaction(config.database_url) as conn:
            usage = store.hourly_usage(conn, user.email, now()) if store.usage_available(conn) else None
            history = store.audit_rows(conn, user.id)
            alerts = recent_alerts(conn, user.email, exact=True) if alerts_available(conn) else None
        context.setdefault("values", {"name": user.name, "email": user.email, "quota": quota_input_text(user.quota)})
        return user_form(request, "user.html", status_code, user=user,
                         chart=usage_chart(usage, user.quota) if usage is not None else None,
                         history=history, alerts=alerts, **context)

    def existing_user(user_id: str) -> store.UserRow:
        with transaction(config.database_url) as conn:
            user = store.get_user(conn, user_id)
        if user is None:
            raise StarletteHTTPException(404, "No user with this id (maybe another operator removed it).")
        return user

    @app.get("/users/{user_id}")
    def user_detail(request: Request, user_id: str):
        operator(request)
        return user_page(request, existing_user(user_id))

    @app.post("/users/{user_id}")
    def edit_user(request: Request, user_id: str, csrf_token: str = Form(""), name: str = Form(""),
                  email: str = Form(""), quota: str = Form("")):
        who = operator(request)
        check_csrf(request, csrf_token)
        before = existing_user(user_id)
        values = {"name": name, "email": email, "quota": quota}
        user, errors = validate_user({**values, "id": user_id}, generate_id=False)
        if user is not None:
            try:
                with transaction(config.database_url) as conn:
                    changed = store.update_user(conn, who, user)
            except store.ChangeRefused as refused:
                errors = refused.errors
            except LookupError:
                raise StarletteHTTPException(404, "No user with this id (maybe another operator removed it).") from None
        if errors:
            return user_page(request, before, 422, values=values, errors=errors)
        message = f"Saved {changed} change(s) to {user.name}." if changed else "Nothing changed."
        return done(request, message, f"/users/{user_id}")

    @app.get("/users/{user_id}/delete")
    def delete_page(request: Request, user_id: str):
        operator(request)
        return render(request, "user_delete.html", user=existing_user(user_id))

    @app.post("/users/{user_id}/delete")
    def delete(request: Request, user_id: str, csrf_token: str = Form("")):
        who = operator(request)
        check_csrf(request, csrf_token)
        with transaction(config.database_url) as conn:
            removed = store.delete_user(conn, who, user_id)
        if not removed:
            raise StarletteHTTPException(404, "No user with this id (maybe another operator removed it).")
        return done(request, f"User {user_id} removed; their traffic counts as unknown from now on.", "/users")

    # -- CSV import, audit -----------------------------------------------------------------
    @app.get("/import")
    def import_page(request: Request):
        operator(request)
        return render(request, "import.html", errors=[])

    @app.post("/import")
    def import_csv(request: Request, csrf_token: str = Form(""), file: UploadFile | None = File(None)):
        who = operator(request)
        check_csrf(request, csrf_token)
        data = file.file.read(MAX_CSV_BYTES + 1) if file is not None else b""
        users_in_file, errors = parse_users_csv(data)
        if not errors:
            try:
                with transaction(config.database_url) as conn:
                    created, updated = store.import_users(conn, who, users_in_file)
            except store.ChangeRefused as refused:
                errors = list(refused.errors.items())
        if errors:
            return render(request, "import.html", 422, errors=errors)
        return done(request, f"Imported {len(users_in_file)} row(s): {created} user(s) added, {updated} changed.",
                    "/users")

    @app.get("/alerts")
    def alerts(request: Request, user: str = ""):
        operator(request)
        with transaction(config.database_url) as conn:
            available = alerts_available(conn)
            rows = recent_alerts(conn, user.strip()[:200]) if available else []
        return render(request, "alerts.html", rows=rows, user=user, available=available, limit=ALERTS_LIMIT)

    @app.get("/audit")
    def audit(request: Request):
        operator(request)
        with transaction(config.database_url) as conn:
            rows = store.audit_rows(conn)
        return render(request, "audit.html", rows=rows)

    return app


def body_too_large(limit: int) -> HTMLResponse:
    """The 413 page (no session, no request: the body was refused before the application saw it)."""
    context = {"operator": None, "csrf_token": "", "flash": None, "title": "Too large",
               "message": f"The request is larger than this page accepts ({limit:,} bytes); nothing was read or saved."}
    return HTMLResponse(TEMPLATES.get_template("error.html").render(context), status_code=413)


def usage_chart(usage: list[tuple[datetime, int | None]], quota: int, width: int = 480, height: int = 120) -> dict:
    """Bar geometry for the last hours' SVG (no script); bars over the quota are marked. A quota far
    above the traffic is left off the scale (else every bar would be flat)."""
    most = max((b or 0 for _, b in usage), default=0)
    quota_shown = quota <= 2 * most
    top = max(most, quota if quota_shown else 0) or 1
    slot = width / len(usage)
    bars = [{"x": round(n * slot + 1, 1), "w": round(slot - 2, 1), "h": round(height * (b or 0) / top, 1),
             "y": round(height - height * (b or 0) / top, 1), "hour": hour, "bytes": b, "over": b is not None and b > quota}
            for n, (hour, b) in enumerate(usage)]
    return {"bars": bars, "width": width, "height": height, "top": top, "quota_shown": quota_shown,
            "quota_y": round(height - height * quota / top, 1), "any_data": most > 0 or any(b is not None for _, b in usage)}

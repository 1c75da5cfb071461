"""What the page needs to run, from the product's settings and the stack folder's secrets."""

from __future__ import annotations

from dataclasses import dataclass

from antenna_assets.serving.operators.schema import OPERATORS_ROLE, grant_operators_role
from antenna_assets.settings import Settings

ROLE_PASSWORD_SECRET = f"postgres-{OPERATORS_ROLE}"
SESSION_SECRET = "operators-session-key"


@dataclass(frozen=True)
class PageConfig:
    database_url: str  # the serving database, as the page's own role
    session_secret: str
    secure_cookie: bool = False
    session_max_age_seconds: int = 8 * 3600
    login_attempts: int = 5
    login_window_seconds: int = 900
    max_body_bytes: int = 6_000_000
    max_signed_out_body_bytes: int = 16_384

    @classmethod
    def from_settings(cls, settings: Settings, serving_url: str | None = None) -> "PageConfig":
        """`serving_url`: the serving database (default: the stack's); the page logs in to it as its role."""
        from antenna_assets.postgres import role_url
        from antenna_assets.stack.secrets import stack_secret

        password, _ = stack_secret(settings, ROLE_PASSWORD_SECRET)
        return cls(
            database_url=role_url(serving_url or settings.postgres_url, OPERATORS_ROLE, password),
            session_secret=stack_secret(settings, SESSION_SECRET)[0],
            secure_cookie=settings.operators_secure_cookie,
            session_max_age_seconds=settings.operators_session_hours * 3600,
            login_attempts=settings.operators_login_attempts,
            login_window_seconds=settings.operators_login_window_seconds,
            max_body_bytes=settings.operators_max_body_bytes,
            max_signed_out_body_bytes=settings.operators_max_signed_out_body_bytes,
        )


def prepare_database(settings: Settings, serving_url: str | None = None) -> None:
    """As the product's user: migrate, create (or re-password) the page's role and grant it its
    privileges. Idempotent; run before the page starts."""
    from antenna_assets.postgres import ensure_login_role, transaction
    from antenna_assets.serving.migration import migrate
    from antenna_assets.stack.secrets import stack_secret

    with transaction(serving_url or settings.postgres_admin_url) as conn:
        migrate(conn)
        ensure_login_role(conn, OPERATORS_ROLE, stack_secret(settings, ROLE_PASSWORD_SECRET)[0])
        grant_operators_role(conn)

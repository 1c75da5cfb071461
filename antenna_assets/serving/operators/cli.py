"""`antenna operators`: create, re-password and remove operator accounts; run the page in the foreground.

They connect as the product's admin: the page's own role cannot write the accounts."""

from __future__ import annotations

import argparse
import getpass
import sys

from antenna_assets.errors import StackError


def register(commands) -> None:
    parser = commands.add_parser("operators", help="the operators' web page for user_metadata")
    actions = parser.add_subparsers(dest="operators_action", required=True)
    add = actions.add_parser("add", help="create an operator account (password prompted, or read from stdin)")
    add.add_argument("name", help="the operator's sign-in name")
    add.add_argument("--reset-password", action="store_true", help="give an existing operator a new password "
                                                                       "(as `antenna operators password`)")
    add.set_defaults(handler=_add)
    password = actions.add_parser("password", help="give an operator a new password (prompted, or read from stdin); "
                                                   "their sessions end")
    password.add_argument("name", help="the operator's sign-in name")
    password.set_defaults(handler=_password)
    remove = actions.add_parser("remove", help="delete an operator account; their sessions end")
    remove.add_argument("name", help="the operator's sign-in name")
    remove.set_defaults(handler=_remove)
    serve = actions.add_parser("serve", help="run the page in this process (`antenna stack up --operators` runs it "
                                             "in the background)")
    serve.set_defaults(handler=_serve)


def _read_password() -> str:
    """Prompted twice on a terminal; else the first line of stdin. Never an argument (`ps` shows those)."""
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise StackError("the two passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def _as_admin(change):
    """`change(conn)` on the migrated serving database as the admin, and its result; a refusal is a
    one-line error."""
    from antenna_assets.postgres import transaction
    from antenna_assets.serving.operators.auth import OperatorError
    from antenna_assets.serving.migration import migrate
    from antenna_assets.settings import Settings

    try:
        with transaction(Settings.from_env().postgres_admin_url) as conn:
            migrate(conn)
            return change(conn)
    except OperatorError as exc:
        raise StackError(str(exc)) from None


def _new_password(name: str) -> str:
    from antenna_assets.serving.operators.auth import OperatorError, check_new_operator

    password = _read_password()
    try:
        check_new_operator(name, password)  # before connecting: a refused password costs no round trip
    except OperatorError as exc:
        raise StackError(str(exc)) from None
    return password


def _sign_in_hint() -> str:
    from antenna_assets.settings import Settings

    settings = Settings.from_env()
    return f"sign in at http://{settings.operators_host}:{settings.operators_port}/login"


def _add(args: argparse.Namespace) -> int:
    from antenna_assets.serving.operators.auth import add_operator

    password = _new_password(args.name)
    created = _as_admin(lambda conn: add_operator(conn, args.name, password, reset=args.reset_password))
    print(f"operator {args.name!r} {'created' if created else 'has a new password; their sessions ended'}; "
          f"{_sign_in_hint()}")
    return 0


def _password(args: argparse.Namespace) -> int:
    from antenna_assets.serving.operators.auth import set_password

    password = _new_password(args.name)
    _as_admin(lambda conn: set_password(conn, args.name, password))
    print(f"operator {args.name!r} has a new password; their sessions ended; {_sign_in_hint()}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    from antenna_assets.serving.operators.auth import remove_operator

    _as_admin(lambda conn: remove_operator(conn, args.name))
    print(f"operator {args.name!r} removed; their sessions ended")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from antenna_assets.serving.operators.app import create_app
    from antenna_assets.serving.operators.config import PageConfig, prepare_database
    from antenna_assets.settings import Settings
    from antenna_assets.stack.process import port_open

    settings = Settings.from_env()
    probe = "127.0.0.1" if settings.operators_host in ("0.0.0.0", "::") else settings.operators_host
    if port_open(settings.operators_port, probe):
        raise StackError(f"port {settings.operators_port} is already in use: stop that process or set ANTENNA_OPERATORS_PORT")
    prepare_database(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # proxy_headers off: the client address (which the sign-in rate limit counts) is the peer's,
    # never a header a client can write.
    uvicorn.run(create_app(PageConfig.from_settings(settings)), host=settings.operators_host,
                port=settings.operators_port, proxy_headers=False, server_header=False, log_level="info")
    return 0

"""`antenna operators`: create operator accounts, run the page in the foreground."""

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
    add.add_argument("--reset-password", action="store_true", help="give an existing operator a new password")
    add.set_defaults(handler=_add)
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


def _add(args: argparse.Namespace) -> int:
    from antenna_assets.postgres import transaction
    from antenna_assets.serving.operators.auth import OperatorError, add_operator, check_new_operator
    from antenna_assets.serving.schema import migrate
    from antenna_assets.settings import Settings

    settings = Settings.from_env()
    password = _read_password()
    try:
        check_new_operator(args.name, password)  # before connecting: a refused password costs no round trip
        with transaction(settings.postgres_admin_url) as conn:  # operators' accounts are set up by the admin
            migrate(conn)
            created = add_operator(conn, args.name, password, reset=args.reset_password)
    except OperatorError as exc:
        raise StackError(str(exc)) from None
    print(f"operator {args.name!r} {'created' if created else 'has a new password'}; sign in at "
          f"http://{settings.operators_host}:{settings.operators_port}/login")
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

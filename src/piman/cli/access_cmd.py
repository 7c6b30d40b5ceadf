"""``piman user …``, ``piman token …`` and ``piman login URL``: accounts and API tokens.

``user`` and ``token`` work against a running manager (``--url``, with an admin's token for
``user``) or, on the manager machine, straight against its store (``-c piman.yaml``): the audit
log then names the local account that ran the command. ``login`` asks a manager for a token with
a password and keeps it where every ``--url`` command finds it (``~/.config/piman/token``).
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from piman.cli.client import CaFileOption, TokenOption, UrlOption, connect, token_file
from piman.cli.common import (
    EXIT_BAD_INPUT,
    ConfigOption,
    console,
    err_console,
    fail,
    local_actor,
    with_store,
)
from piman.cli.output import Column, JsonFlag, Output, OutputOption, chosen, emit
from piman.config.types import parse_duration
from piman.errors import StoreError

if TYPE_CHECKING:
    from piman.access.service import AccessService
    from piman.config.models import Config
    from piman.store import Store

__all__ = ["register"]

T = TypeVar("T")

user_app = typer.Typer(help="Accounts: add, list, remove, change password or role.")
token_app = typer.Typer(
    help="API tokens for scripts and the CLI: create (shown once), list, revoke."
)

RoleArg = Annotated[str, typer.Argument(help="admin, operator, user or viewer.")]
PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from standard input (one line)."),
]
Generate = Annotated[
    bool, typer.Option("--generate", help="Make a random password and print it once.")
]
USER_COLUMNS = (
    Column("name", "name", name=True),
    Column("role", "role", priority=1),
    Column("created", "created_at", priority=2, time=True),
    Column("updated", "updated_at", wide=True, time=True),
)
TOKEN_COLUMNS = (
    Column("id", "id", name=True, right=True),
    Column("user", "user", priority=1),
    Column("state", "state", priority=1),
    Column("prefix", "prefix", priority=2),
    Column("name", "name", priority=4, shrink=True),
    Column("expires", "expires_at", priority=3, time=True, missing="never"),
    Column("last used", "last_used_at", priority=5, time=True, missing="never"),
    Column("created", "created_at", wide=True, time=True),
    Column("revoked", "revoked_at", wide=True, time=True),
)


def _password(stdin: bool, generate: bool, *, prompt: str = "Password") -> str:
    from piman.access.secrets import PasswordPolicyError, check_password_policy, new_password

    if stdin and generate:
        fail("--password-stdin and --generate exclude each other", EXIT_BAD_INPUT)
    if generate:
        password = new_password()
        console.print(f"password (shown once): {password}", markup=False)
        return password
    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"{prompt} again: ") != password:
            fail("the passwords differ", EXIT_BAD_INPUT)
    else:
        fail(
            "no terminal to ask for the password: use --password-stdin or --generate",
            EXIT_BAD_INPUT,
        )
    try:
        return check_password_policy(password)
    except PasswordPolicyError as err:
        fail(str(err), EXIT_BAD_INPUT)


def _offline(config: Path | None, work: Callable[[AccessService], Awaitable[T]]) -> T:
    """Run ``work(access_service)`` against the configured store (no manager needed)."""
    from piman.access.service import AccessService, load_session_key

    async def run(cfg: Config, store: Store) -> T:
        service = AccessService(
            store,
            cfg.access,
            data_dir=cfg.manager.data_dir,
            session_key=load_session_key(cfg.manager.data_dir),
        )
        return await work(service)

    return with_store(config, run)


def _expires(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as err:
        fail(f"--expires: {err}", EXIT_BAD_INPUT)
    if seconds <= 0:
        fail("--expires must be more than 0 s", EXIT_BAD_INPUT)
    return datetime.now(UTC) + timedelta(seconds=seconds)


# -- piman user ------------------------------------------------------------------------------------


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The user name (lower case).")],
    role: Annotated[str, typer.Option("--role", help="admin, operator, user or viewer.")],
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Create an account; asks for its password (or --password-stdin, --generate).

    Example: piman user add alice --role operator --generate
    """
    from piman.access.roles import parse_role
    from piman.access.service import check_user_name

    try:
        check_user_name(name)
        parse_role(role)
    except ValueError as err:
        fail(str(err), EXIT_BAD_INPUT)
    password = _password(password_stdin, generate)
    if url:
        with connect(url, token, ca_file) as client:
            made = client.post("/users", {"name": name, "role": role, "password": password})
        console.print(f"user {made['name']} added with role {made['role']}", markup=False)
        return

    async def work(access: AccessService) -> None:
        try:
            await access.add_user(name, role, password)
        except StoreError as err:
            raise ValueError(str(err)) from None
        await access.store.audit.add(local_actor(), "user.add", name, "ok", f"role {role}")

    _offline(config, work)
    console.print(f"user {name} added with role {role}", markup=False)


@user_app.command("list")
def user_list(
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List accounts and their roles.

    With --url, asks a running manager (as an admin); otherwise reads the store.

    Examples:
      piman user list
      piman user list --url http://manager:8000 -o json
    """
    if url:
        with connect(url, token, ca_file) as client:
            rows = client.get("/users")
    else:
        from piman.web.api.accounts import UserOut

        async def work(access: AccessService) -> list[dict[str, Any]]:
            return [UserOut.of(u).model_dump(mode="json") for u in await access.users()]

        rows = _offline(config, work)
    emit(chosen(output, as_json), rows, USER_COLUMNS, title=f"{len(rows)} users")


@user_app.command("remove")
def user_remove(
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Remove an account with its tokens and sessions (never the last admin).

    Example: piman user remove alice --yes
    """
    if not yes and sys.stdin.isatty() and not typer.confirm(f"Remove user {name}?"):
        raise typer.Exit(1)
    if url:
        with connect(url, token, ca_file) as client:
            client.delete(f"/users/{name}")
    else:

        async def work(access: AccessService) -> None:
            users = await access.users()
            admins = [u.name for u in users if u.role == "admin"]
            if admins == [name]:
                raise ValueError(f"{name} is the last admin: make another admin first")
            await access.remove_user(name)
            await access.store.audit.add(local_actor(), "user.remove", name, "ok")

        _offline(config, work)
    console.print(f"user {name} removed", markup=False)


@user_app.command("passwd")
def user_passwd(
    name: Annotated[str, typer.Argument(help="Whose password.")],
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Set a new password (ends that user's browser sessions).

    With --url, a non-admin changes their own password and is asked for the current one.

    Example: piman user passwd admin
    """
    if url:
        with connect(url, token, ca_file) as client:
            me = client.get("/auth/me")
            body: dict[str, Any] = {}
            if me["role"] != "admin":
                body["current_password"] = getpass.getpass("Current password: ")
            body["password"] = _password(password_stdin, generate, prompt="New password")
            client.post(f"/users/{name}/password", body)
    else:
        password = _password(password_stdin, generate, prompt="New password")

        async def work(access: AccessService) -> None:
            await access.set_password(name, password)
            await access.store.audit.add(local_actor(), "user.passwd", name, "ok")

        _offline(config, work)
    console.print(f"password of {name} changed", markup=False)


@user_app.command("role")
def user_role(
    name: Annotated[str, typer.Argument(help="Whose role.")],
    role: RoleArg,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Change a user's role (never the last admin's away from admin).

    Example: piman user role alice viewer
    """
    from piman.access.roles import parse_role

    try:
        role = parse_role(role).value
    except ValueError as err:
        fail(str(err), EXIT_BAD_INPUT)
    if url:
        with connect(url, token, ca_file) as client:
            client.patch(f"/users/{name}", {"role": role})
    else:

        async def work(access: AccessService) -> None:
            admins = [u.name for u in await access.users() if u.role == "admin"]
            if role != "admin" and admins == [name]:
                raise ValueError(f"{name} is the last admin: make another admin first")
            await access.set_role(name, role)
            await access.store.audit.add(local_actor(), "user.role", name, "ok", f"role {role}")

        _offline(config, work)
    console.print(f"{name} is now {role}", markup=False)


@user_app.command("email")
def user_email(
    name: Annotated[str, typer.Argument(help="Whose address.")],
    address: Annotated[
        str | None, typer.Argument(help="The address (none: clear it).", show_default=False)
    ] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Set where a user's mail goes (the warnings before their reservations end).

    Example: piman user email alice alice@lab.example.org
    """
    if url:
        with connect(url, token, ca_file) as client:
            client.patch(f"/users/{name}", {"email": address})
    else:

        async def work(access: AccessService) -> None:
            await access.set_email(name, address)
            await access.store.audit.add(local_actor(), "user.email", name, "ok", address)

        _offline(config, work)
    console.print(f"{name}: {address or 'no e-mail address'}", markup=False)


# -- piman token -----------------------------------------------------------------------------------


def _token_out(record: Any) -> dict[str, Any]:
    from piman.web.api.accounts import TokenOut

    return TokenOut.of(record).model_dump(mode="json")


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option("--name", help="What the token is for.")] = "cli",
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 90d (default: until revoked).")
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", help="Whose token (without --url: required).")
    ] = None,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Create an API token and print it (once: only its hash is kept).

    Example: piman token create --name prometheus --expires 365d --url http://manager:8000
    """
    if url:
        if user:
            fail("--user is for the store; with --url a token is made for yourself", EXIT_BAD_INPUT)
        with connect(url, token, ca_file) as client:
            made = client.post("/tokens", {"name": name, "expires_in": expires})
        secret, prefix, owner = made["token"], made["prefix"], made["user"]
    else:
        if not user:
            fail("without --url, say whose token it is with --user NAME", EXIT_BAD_INPUT)
        when = _expires(expires)

        async def work(access: AccessService) -> tuple[str, str]:
            record, secret = await access.create_token(user, name, when)
            await access.store.audit.add(local_actor(), "token.create", user, "ok", record.prefix)
            return secret, record.prefix

        secret, prefix = _offline(config, work)
        owner = user
    console.print(f"token {prefix} for {owner} ({name}); it is shown this once:", markup=False)
    console.print(secret, markup=False, soft_wrap=True)


@token_app.command("list")
def token_list(
    show_all: Annotated[bool, typer.Option("--all", help="Every user's tokens (admin).")] = False,
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
    output: OutputOption = Output.TABLE,
    as_json: JsonFlag = False,
) -> None:
    """List API tokens by prefix (never the tokens themselves).

    Without --url, every user's tokens from the store; with --url yours, --all everyone's.

    Examples:
      piman token list --all
      piman token list -o wide
    """
    if url:
        with connect(url, token, ca_file) as client:
            rows = client.get("/tokens?all=true" if show_all else "/tokens")
    else:

        async def work(access: AccessService) -> list[dict[str, Any]]:
            return [_token_out(t) for t in await access.tokens(None)]

        rows = _offline(config, work)
    emit(chosen(output, as_json), rows, TOKEN_COLUMNS, title=f"{len(rows)} tokens")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (see `piman token list`).")],
    config: ConfigOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Revoke a token at once.

    Example: piman token revoke 3
    """
    if url:
        with connect(url, token, ca_file) as client:
            made = client.delete(f"/tokens/{token_id}")
        prefix = made["prefix"]
    else:

        async def work(access: AccessService) -> str:
            record = await access.revoke_token(token_id, user=None)
            await access.store.audit.add(
                local_actor(), "token.revoke", record.user, "ok", record.prefix
            )
            return str(record.prefix)

        prefix = _offline(config, work)
    console.print(f"token {prefix} revoked", markup=False)


# -- piman login -----------------------------------------------------------------------------------


def login(
    url: Annotated[str, typer.Argument(help="The manager, e.g. http://198.18.0.1:8000")],
    user: Annotated[str | None, typer.Option("--user", "-u", help="Your user name.")] = None,
    password_stdin: PasswordStdin = False,
    expires: Annotated[
        str, typer.Option("--expires", help="How long the stored token lasts.")
    ] = "90d",
    ca_file: CaFileOption = None,
) -> None:
    """Log in to a manager and keep an API token for the --url commands.

    The token goes to ~/.config/piman/token (mode 0600; $PIMAN_TOKEN_FILE elsewhere).

    Example: piman login http://198.18.0.1:8000 --user alice
    """
    name = user or input("User name: ").strip()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
    label = f"cli {getpass.getuser()}@{socket.gethostname()}"[:128]
    with connect(url, None, ca_file) as client:
        made = client.post(
            "/auth/token",
            {"username": name, "password": password, "name": label, "expires_in": expires},
        )
    path = token_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(made["token"] + "\n")
    tmp.replace(path)
    err_console.print(
        f"logged in to {url} as {made['user']}; token {made['prefix']} stored in {path}",
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.command("login")(login)

"""``prov serve`` and ``prov token``: the ledger as a service, and the tokens that open it."""

from __future__ import annotations

from datetime import datetime, timezone

import click
from rich.table import Table

from provenance.cli import render
from provenance.cli.app import CliError, Context, PathType, json_option, main, pass_ctx


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The TCP port to listen on (0: a free one, printed when the server starts).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve without tokens (everything allowed); only on the loopback address.")
@click.option("--ssl-certfile", type=PathType(dir_okay=False, exists=True), default=None, help="TLS certificate (PEM).")
@click.option("--ssl-keyfile", type=PathType(dir_okay=False, exists=True), default=None, help="TLS private key (PEM).")
@click.option("--max-upload", type=click.IntRange(min=1), default=64 << 30, show_default=True,
              help="The largest body one upload may have, in bytes (document rows, examples, a model state).")
@pass_ctx
def serve_cmd(obj: Context, host: str, port: int, insecure_no_auth: bool, ssl_certfile: str | None,
              ssl_keyfile: str | None, max_upload: int) -> None:
    """Serve the ledger over HTTP: training jobs and maintainers use it with --ledger http://HOST:PORT
    (or Ledger.open(URL, token=...)). The server owns the ledger while it runs; it needs an admin
    token (`prov token create NAME --scope admin`) unless --insecure-no-auth."""
    from provenance.api import Ledger
    from provenance.server.app import serve

    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise click.UsageError("--ssl-certfile and --ssl-keyfile go together")
    path = obj.ledger_path
    if path is not None and path.startswith(("http://", "https://")):
        raise click.UsageError("prov serve serves a ledger folder, not a URL")
    root = Ledger.find() if path is None else path
    serve(str(root), host=host, port=port, auth=not insecure_no_auth, ssl_certfile=ssl_certfile,
          ssl_keyfile=ssl_keyfile, max_upload=max_upload)


@main.group("token")
def token_group() -> None:
    """API tokens of `prov serve`: read, write (read too) or admin (everything)."""


@token_group.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), required=True,
              help="read: queries; write: also registrations, runs, commits, merges; admin: also tokens, gc, verify.")
@click.option("--expires", default=None, metavar="DAYS",
              help="Days until it stops working (e.g. 30 or 30d; default: never).")
@json_option
@pass_ctx
def token_create(obj: Context, name: str, scope: str, expires: str | None, as_json: bool) -> None:
    """Create a token and print it once: the ledger keeps only its hash."""
    days = None
    if expires is not None:
        try:
            days = float(expires.removesuffix("d"))
        except ValueError:
            raise click.BadParameter(f"{expires!r}: a number of days, like 30 or 30d", param_hint="--expires") from None
        if not 0 < days <= 36_500:  # nan and inf too; the ledger keeps a date (a server answered 4 in words of its own)
            raise click.BadParameter(f"{expires!r}: more than 0 and at most 36500 days", param_hint="--expires")
    record, secret = obj.ledger().issue_token(name, scope, expires_days=days)
    render.emit({**record.model_dump(mode="json"), "token": secret}, as_json,
                lambda d: f"{d['token']}\n(token {d['name']}, scope {d['scope']}"
                          + (f", expires {d['expires_at'][:16]}" if d["expires_at"] else "")
                          + "; shown once: the ledger keeps only its hash)")


@token_group.command("list")
@json_option
@pass_ctx
def token_list(obj: Context, as_json: bool) -> None:
    """Every token's name, scope and state (never the token itself)."""
    records = obj.ledger(read_only=True).tokens()
    if as_json:
        return render.dump([r.model_dump(mode="json") for r in records])
    t = Table()
    for col in ("name", "scope", "created", "expires", "state"):
        t.add_column(col)
    now = datetime.now(timezone.utc).replace(tzinfo=None)  # the records' times are naive UTC
    for r in records:
        state = "revoked" if r.revoked_at else "expired" if r.expires_at and r.expires_at <= now else "live"
        t.add_row(r.name, r.scope, f"{r.created_at:%Y-%m-%d %H:%M}",
                  f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "never", state)
    render.console().print(t) if records else render.echo("no tokens")


@token_group.command("revoke")
@click.argument("name")
@json_option
@pass_ctx
def token_revoke(obj: Context, name: str, as_json: bool) -> None:
    """Revoke a token: calls made with it are refused from now on."""
    ledger = obj.ledger()
    before = next((t for t in ledger.tokens() if t.name == name), None)
    record = ledger.revoke_token(name)
    if not record.revoked_at:
        raise CliError(f"token {name} was not revoked")
    already = before is not None and before.revoked_at is not None
    render.emit(record.model_dump(mode="json"), as_json,
                lambda d: f"token {d['name']} was already revoked ({record.revoked_at:%Y-%m-%d %H:%M} UTC); "
                          "nothing changed" if already else f"revoked {d['name']}")

"""The CLI's accounts, organizations and tokens: ``warmfleet accounts ...``, ``warmfleet tokens ...`` and
``warmfleet whoami``. ``warmfleet.cli.commands`` puts them on the root group."""

from __future__ import annotations

import time

import click

from warmfleet.cli.context import CliContext, echo_json, pass_cli, show_table
from warmfleet.client import Token

ROLES = click.Choice(["user", "priority", "admin"])


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


@click.command()
@pass_cli
def whoami(obj: CliContext) -> None:
    """The account the token belongs to, its organizations and the token's role."""
    account, organizations, role = obj.client().accounts.me()
    click.echo(f"{account.name} ({account.kind}, {account.id}), token role {role}")
    for org in organizations:
        click.echo(f"  member of {org.name} ({org.id})")


@click.group()
def accounts() -> None:
    """Accounts and organizations (admin)."""


@accounts.command("create")
@click.argument("name")
@click.option("--organization", "is_org", is_flag=True, help="Make an organization, not a user.")
@click.option("--token/--no-token", default=True, show_default=True,
              help="Also make the user's first token (named 'default') and print it.")
@click.option("--role", type=ROLES, default="user", show_default=True, help="The first token's role.")
@pass_cli
def accounts_create(obj: CliContext, name: str, is_org: bool, token: bool, role: str) -> None:
    """Create the account NAME (a user, or with --organization an organization)."""
    client = obj.client()
    account = client.accounts.create(name, "organization" if is_org else "user")
    click.echo(f"created {account.kind} {account.name} ({account.id})", err=True)
    if token and not is_org:
        made = client.accounts.create_token("default", role, account=account.name)
        click.echo(made.text)
        click.echo(f"its {role} token {made.token.id} is above; it is not shown again", err=True)


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def accounts_list(obj: CliContext, as_json: bool) -> None:
    """Every account."""
    found = obj.client().accounts.list()
    if as_json:
        echo_json(found)
        return
    show_table("accounts", ["name", "kind", "id", "created"],
          [[a.name, a.kind, a.id, _when(a.created_at)] for a in found])


@accounts.command("members")
@click.argument("organization")
@pass_cli
def accounts_members(obj: CliContext, organization: str) -> None:
    """The members of ORGANIZATION."""
    found = obj.client().accounts.members(organization)
    show_table(f"members of {organization}", ["name", "id"], [[a.name, a.id] for a in found])


@accounts.command("add-member")
@click.argument("organization")
@click.argument("account")
@pass_cli
def accounts_add_member(obj: CliContext, organization: str, account: str) -> None:
    """Make the user ACCOUNT a member of ORGANIZATION: it shares the organization's models."""
    obj.client().accounts.set_member(organization, account, True)
    click.echo(f"{account} is a member of {organization}")


@accounts.command("remove-member")
@click.argument("organization")
@click.argument("account")
@pass_cli
def accounts_remove_member(obj: CliContext, organization: str, account: str) -> None:
    """Take ACCOUNT out of ORGANIZATION."""
    obj.client().accounts.set_member(organization, account, False)
    click.echo(f"{account} is no longer a member of {organization}")


@click.group()
def tokens() -> None:
    """Access tokens: your own, or (admin) any account's."""


@tokens.command("create")
@click.argument("account", required=False, default="")
@click.option("--name", default="default", show_default=True, help="What the token is for (laptop, ci...).")
@click.option("--role", type=ROLES, default="user", show_default=True)
@pass_cli
def tokens_create(obj: CliContext, account: str, name: str, role: str) -> None:
    """Create a token for ACCOUNT (default: your own) and print it (it is not shown again)."""
    made = obj.client().accounts.create_token(name, role, account=account)
    click.echo(made.text)
    click.echo(f"created {role} token {made.token.id} ({name!r}) of {made.token.account}; it is not shown "
               "again", err=True)


@tokens.command("list")
@click.option("--account", default="", help="An account's tokens (admin); default: yours (an admin's: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def tokens_list(obj: CliContext, account: str, as_json: bool) -> None:
    """Tokens, without their text: id, account, name, role, created, last used, revoked."""
    found = obj.client().accounts.tokens(account)
    if as_json:
        echo_json(found)
        return
    show_table("tokens", ["id", "account", "name", "role", "created", "last used", "revoked"],
          [_token_row(t) for t in found])


def _token_row(t: Token) -> list[str]:
    return [t.id, t.account, t.name, t.role, _when(t.created_at), _when(t.last_used_at), _when(t.revoked_at)]


@tokens.command("revoke")
@click.argument("token_id")
@pass_cli
def tokens_revoke(obj: CliContext, token_id: str) -> None:
    """Revoke the token TOKEN_ID (see `warmfleet tokens list`): refused from its next call on."""
    token = obj.client().accounts.revoke_token(token_id)
    click.echo(f"revoked {token.id} ({token.name!r}) of {token.account}")

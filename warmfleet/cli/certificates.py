"""The CLI's TLS commands: ``warmfleet tls self-signed`` writes a certificate and key for a first try of
``warmfleet up --tls-cert ... --tls-key ...``. ``warmfleet.cli.commands`` puts them on the root group."""

from __future__ import annotations

from pathlib import Path

import click

from warmfleet.cli.context import CliContext, CliError, pass_cli
from warmfleet.tls import CERT_FILE, KEY_FILE, LOCAL_HOSTS, SELF_SIGNED_DAYS, self_signed, write_pair


@click.group()
def tls() -> None:
    """TLS for the gateway: `up --tls-cert CERT --tls-key KEY` serves gRPC and HTTPS with a pair."""


@tls.command("self-signed")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="The folder to write cert.pem and key.pem in (default: the home's tls/ folder).")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="A DNS name or IP address the certificate is for, besides localhost, 127.0.0.1 and ::1 "
                   "(repeatable).")
@click.option("--days", type=click.IntRange(min=1), default=SELF_SIGNED_DAYS, show_default=True,
              help="How long the certificate is valid.")
@click.option("--force", is_flag=True, help="Replace a pair already in the folder.")
@pass_cli
def self_signed_pair(obj: CliContext, out_dir: Path | None, hosts: tuple[str, ...], days: int,
                     force: bool) -> None:
    """Write a self-signed certificate and its key (mode 0600), and print how to serve and trust them."""
    out = (out_dir or obj.settings().home / "tls").expanduser().absolute()
    cert, key = out / CERT_FILE, out / KEY_FILE
    if not force and (cert.exists() or key.exists()):
        raise CliError(f"{out} holds a certificate or key already: pass --force to replace them, or --out")
    names = list(dict.fromkeys([*hosts, *LOCAL_HOSTS]))  # the first one given is the subject's name
    write_pair(self_signed(names, days), cert, key)
    prefix = obj.command_prefix()
    host = f"[{names[0]}]" if ":" in names[0] else names[0]  # an IPv6 address, in a URL
    click.echo(f"wrote a self-signed certificate for {', '.join(names)}, valid {days} days")
    click.echo(f"  certificate: {cert}")
    click.echo(f"  key:         {key} (mode 0600: keep it to the gateway's user)")
    click.echo("serve gRPC and HTTPS with it:")
    click.echo(f"  {prefix} up --tls-cert {cert} --tls-key {key}")
    click.echo("this machine's CLI and warmfleet.Client then verify the gateway with it by themselves;")
    click.echo("elsewhere, hand clients the certificate (never the key):")
    click.echo(f'  Client("grpcs://{host}:50051", root_certificates="{cert}")')
    click.echo(f"  curl --cacert {cert} https://{host}:8000/healthz")
    click.echo("a self-signed certificate is for a first try: in production, use one a CA issued (--tls-ca)")

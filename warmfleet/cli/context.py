"""What every CLI command shares: the global flags' context (settings and client, each built once), the
error shown as one line, and the printing of JSON and tables."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime
from typing import Any

import click

from warmfleet.cli import launch
from warmfleet.client import Client, File, WarmfleetClientError
from warmfleet.errors import WarmfleetError
from warmfleet.settings import Settings, load_settings

PIPE_WIDTH = 140  # columns of tables printed into a pipe


# Errors


class CliError(click.ClickException):
    """An error shown as one line, ``error: <message>``, on stderr, with exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class WarmfleetGroup(click.Group):
    """The root group: turns the errors users cause (no gateway, bad token, bad input) into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WarmfleetClientError as err:
            hint = "; pass --token or set WARMFLEET_TOKEN" if err.code == "UNAUTHENTICATED" else ""
            raise CliError(f"{err}{hint}") from err
        except (WarmfleetError, launch.LaunchError, OSError) as err:
            raise CliError(str(err)) from err


# Context: flags in, settings and client out


@dataclass
class CliContext:
    """The global flags, and the settings and client built from them (each once)."""

    url: str | None = None
    token: str | None = None
    home: str | None = None
    config: str | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    def settings(self, **flags: Any) -> Settings:
        """The process's settings; the first caller may add command flags (e.g. `up --grpc-port`)."""
        if self._settings is None:
            self._settings = load_settings({"home": self.home, "token": self.token, **flags}, self.config)
        return self._settings

    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client(url=self.url, settings=self.settings())
            except ValueError as err:  # a malformed --url
                raise CliError(str(err)) from err
        return self._client

    def command_prefix(self) -> str:
        """How to call `warmfleet` again with the same home, for hints."""
        return f"warmfleet --home {self.home}" if self.home else "warmfleet"


pass_cli = click.make_pass_decorator(CliContext)


# Printing


def to_jsonable(value: Any) -> Any:
    """Client dataclasses as JSON-ready data: datetimes as ISO 8601, files as their description."""
    if isinstance(value, File):
        return {"name": value.name, "content_type": value.content_type, "size_bytes": value.size_bytes,
                "width": value.width, "height": value.height}
    if is_dataclass(value) and not isinstance(value, type):
        return {k: to_jsonable(getattr(value, k)) for k in asdict(value)}
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2))


def show_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    key_width = max([len(columns[0])] + [len(row[0]) for row in rows])
    table.add_column(columns[0], no_wrap=True, min_width=key_width)  # ids stay whole, for copying
    for column in columns[1:]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    print_renderable(table)


def print_renderable(renderable: Any) -> None:
    """Print a rich table or frame; into a pipe, PIPE_WIDTH wide (not rich's 80) so that rows stay whole."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=PIPE_WIDTH)
    console.print(renderable)

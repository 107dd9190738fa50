"""``lazypull login`` and ``lazypull logout``: credentials in docker's config.json, as nerdctl does.

Credentials are checked against the registry before they are saved (basic auth on ``/v2/``, or
a token request for bearer-auth registries), then written to ``$DOCKER_CONFIG/config.json`` (or
``~/.docker/config.json``), or handed to the configured credential helper.
"""

from __future__ import annotations

import sys

import click

from lazypull.cli._options import get_options, global_options
from lazypull.registry import Credentials, RegistryClient, StaticAuth, default_auth, normalize_server

DEFAULT_SERVER = "docker.io"


def _server_host(server: str | None) -> str:
    """``https://host/v1/`` or ``host`` -> ``host`` (Docker Hub by default)."""
    host = normalize_server(server or DEFAULT_SERVER)
    if not host:
        raise click.BadParameter(f"invalid server address {server!r}", param_hint="SERVER")
    return host


@click.command("login")
@click.argument("server", required=False)
@click.option("-u", "--username", help="Username.")
@click.option("-p", "--password", help="Password (prefer --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@global_options
def login(server: str | None, username: str | None, password: str | None, password_stdin: bool) -> None:
    """Log in to a registry (default Docker Hub) and save the credentials."""
    host = _server_host(server)
    if password_stdin:
        if password:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        if not username:
            raise click.UsageError("--password-stdin requires --username")
        password = sys.stdin.read().rstrip("\r\n")
    elif password:
        click.echo("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", err=True)
    if not username:
        username = click.prompt("Username", type=str)
    if not password:
        password = click.prompt("Password", hide_input=True, type=str)
    if not username or not password:
        raise click.UsageError("username and password must not be empty")
    opts = get_options()
    with RegistryClient(insecure=opts.insecure_registries, auth=StaticAuth(username, password)) as client:
        client.check_login(host)
    where = default_auth().store(host, Credentials(username, password))
    click.echo(f"Credentials saved in {where}")
    click.echo("Login Succeeded")


@click.command("logout")
@click.argument("server", required=False)
@global_options
def logout(server: str | None) -> None:
    """Remove saved credentials for a registry (default Docker Hub)."""
    host = _server_host(server)
    if default_auth().erase(host):
        click.echo(f"Removing login credentials for {host}")
    else:
        click.echo(f"Not logged in to {host}")


COMMANDS: list[click.Command] = [login, logout]

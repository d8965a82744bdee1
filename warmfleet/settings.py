"""One frozen settings object per process, built once from flags, a config file and the environment.

Precedence: explicit flags > ``WARMFLEET_*`` environment variables > the config file > defaults.
Nothing here runs at import time; callers build ``Settings`` once and pass it down.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from warmfleet.errors import InvalidInput


@dataclass(frozen=True)
class Settings:
    """Everything a warmfleet process needs to know about where it lives and how it serves."""

    home: Path = Path("~/.warmfleet")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    ray_address: str = ""  # a Ray cluster to join ("auto": the one started on this machine); "": a new one
    ray_namespace: str = "warmfleet"
    max_queue_per_model: int = 1024
    token: str = ""
    max_message_bytes: int = 256 * 1024 * 1024
    # The cluster config file (models, deployments) that `warmfleet up` serves; by default the --config
    # file itself, when one is given (see warmfleet/cli/cluster_config.py).
    cluster_config: str = ""
    # Files (gateway/files.py). An input URL is fetched with these bounds; addresses that are not public
    # (loopback, private, link-local...) are refused unless the operator allows them.
    max_input_file_bytes: int = 100 * 1024 * 1024
    url_fetch_timeout_s: float = 30.0
    allow_private_urls: bool = False
    # Inputs and outputs of predictions completed this long ago are removed (data_removed), as Replicate
    # does after an hour; 0 keeps them. The sweep runs every retention_interval_s.
    retention_s: float = 3600.0
    retention_interval_s: float = 60.0
    # The Files API: the largest upload, and how long a file is kept (0: until deleted).
    files_max_bytes: int = 100 * 1024 * 1024
    file_ttl_s: float = 24 * 3600.0
    # How long the signed links in responses (urls.get and urls.stream, output files, a file's urls) open
    # without the token (gateway/signing.py): the hour Replicate keeps outputs. 0 or less: every link
    # given is already expired, and only the token opens those URLs.
    signed_url_ttl_s: float = 3600.0
    # On a plain-http gateway, REST responses and webhook bodies show an output's files inline as data URLs
    # when they come to at most this many bytes in all (a page of predictions: in all, across the page),
    # so that clients which open only https: and data: outputs (Replicate's) open them; larger ones,
    # and every output over https, stay signed URLs. 0: never inline (gateway/rest/shapes.py).
    inline_output_max_bytes: int = 1024 * 1024
    # Limits per account (gateway/limits.py), on every entry (gRPC, REST, the OpenAI routes); an admin
    # token is not limited. Prediction creates a minute (a token bucket; Replicate's default is 600) and
    # Files API uploads a minute, 0 turning the limit off; predictions queued or running at once; bytes
    # of uploads kept at once.
    rate_limit_per_minute: int = 600
    upload_rate_limit_per_minute: int = 600
    max_active_per_account: int = 5000
    max_stored_bytes_per_account: int = 10 * 1024**3
    # TLS on the gateway's ports (gateway/tls.py): a PEM certificate (chain) and its unencrypted PEM key,
    # both or neither; neither serves plaintext. tls_ca_path: the certificate clients on this machine
    # verify the gateway's with (the CA that issued it; empty: tls_cert_path itself, as for a self-signed
    # one); `up` records it for the CLI, and a client given a TLS URL uses it.
    tls_cert_path: str = ""
    tls_key_path: str = ""
    tls_ca_path: str = ""
    # TLS on the data plane between routers and agents too (each agent makes a key pair of its own at
    # start; routers pin the certificate that reaches them through Ray). Read when the agents start.
    data_plane_tls: bool = False

    @property
    def store_path(self) -> Path:
        return self.home / "predictions.sqlite3"

    @property
    def accounts_path(self) -> Path:
        """Where the accounts, organizations and tokens are kept (gateway/accounts.py)."""
        return self.home / "accounts.sqlite3"

    @property
    def admin_token_path(self) -> Path:
        return self.home / "admin_token"

    @property
    def grpc_target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def state_path(self) -> Path:
        """Where `warmfleet up` records what it started, for `warmfleet down` and the CLI."""
        return self.home / "cluster.json"

    @property
    def routes_path(self) -> Path:
        """Where the controller keeps the models and deployments changed through the API."""
        return self.home / "routes.json"

    @property
    def files_path(self) -> Path:
        """Where the Files API keeps uploads: content-addressed bytes and a metadata file for each."""
        return self.home / "files"

    @property
    def bundles_path(self) -> Path:
        """Where pushed Cog models' bundles are kept, by digest (``DIGEST.tar``)."""
        return self.home / "bundles"

    @property
    def node_cache_path(self) -> Path:
        """Where node agents keep what they fetch and build for pushed models (bundles, environments)."""
        return self.home / "node"

    @property
    def models_path(self) -> Path:
        """Where generated tiny models are written."""
        return self.home / "models"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "Path":
            return Path(str(raw)).expanduser()
        if kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _boolean(raw)
        return str(raw)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"settings.{name}", f"expected {kind}, got {raw!r}") from err


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _boolean(raw: Any) -> bool:
    """A flag from TOML (a bool), a flag value or the environment ("1"/"true"/"yes"/"on", or the opposite)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(raw)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the process's settings. ``flags`` whose value is None are ignored."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    if config_file:
        with open(config_file, "rb") as fh:
            values.update(tomllib.load(fh).get("settings", {}))
        values.setdefault("cluster_config", str(Path(config_file).expanduser().resolve()))
    for name in _FIELDS:
        env = environ.get(f"WARMFLEET_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise InvalidInput(f"settings.{unknown[0]}", "is not a known setting")
    coerced = {name: _coerce(name, raw) for name, raw in values.items()}
    coerced.setdefault("home", Path("~/.warmfleet").expanduser())
    return _checked_tls(Settings(**coerced))


TLS_FILES = ("tls_cert_path", "tls_key_path", "tls_ca_path")


def _checked_tls(settings: Settings) -> Settings:
    """The TLS files as absolute paths (the background gateway and `up`'s record use them from another
    folder; not resolved: a certificate renewed behind a symlink stays the one named), each readable,
    and the certificate and key given together: a mistake is refused where the settings are built, not
    in a background gateway's log."""
    paths = {name: os.path.abspath(os.path.expanduser(getattr(settings, name))) if getattr(settings, name)
             else "" for name in TLS_FILES}
    if bool(paths["tls_cert_path"]) != bool(paths["tls_key_path"]):
        missing, given = (("tls_key_path", "tls_cert_path") if paths["tls_cert_path"]
                          else ("tls_cert_path", "tls_key_path"))
        raise InvalidInput(f"settings.{missing}", f"is required with {given}: give both, or neither")
    for name, path in paths.items():
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as err:
                raise InvalidInput(f"settings.{name}", f"cannot read {path}: {err.strerror or err}") from err
    return dataclasses.replace(settings, **paths)

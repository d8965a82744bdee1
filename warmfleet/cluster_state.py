"""Where a running cluster serves: the state file in the home folder that `warmfleet up` and the gateway
process write, and the CLI and the Python client read to find it.

The file holds two records, each written by the process that knows it: the gateway's (its pid and
where it serves; the gateway writes it once it serves and removes it when it stops) at the top level, as
ever, and, when `up` started a Ray of the home's own, that Ray head's under ``ray_head`` (`up` writes it
when it starts the head; `down` removes the file once the head is stopped). A file with only the head's
record is a cluster whose gateway is not running: one that crashed, or one being started."""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any

from warmfleet.settings import Settings
from warmfleet.tls import client_ssl_context


@dataclass(frozen=True)
class RayHead:
    """The Ray head `warmfleet up` started for this home (when the settings name no Ray to join)."""

    pid: int  # the head's own process (`ray start --block`), whose session every Ray process of it is in
    address: str  # host:port of its GCS, which the gateway joins; "" until the head is up
    temp_dir: str  # Ray's temporary folder for this home: sessions, logs, sockets
    started_at: float  # seconds since the epoch


@dataclass(frozen=True)
class ClusterState:
    """What `warmfleet up` recorded in ``$WARMFLEET_HOME/cluster.json``."""

    pid: int
    grpc_target: str
    admin_token_path: str
    started_at: float
    http_target: str = ""  # host:port of /metrics and /healthz; empty when the gateway could not bind it
    ray_head: RayHead | None = None  # the Ray `up` started for this home, which this gateway serves
    # Both ports serve TLS; clients verify the gateway's certificate with the PEM file at tls_ca_path (the
    # CA that issued it, or the certificate itself). A file without these fields is a plaintext gateway's.
    tls: bool = False
    tls_ca_path: str = ""

    @property
    def http_url(self) -> str:
        """The base URL of the gateway's HTTP side (https:// over TLS), or "" when it serves none."""
        return f"{'https' if self.tls else 'http'}://{self.http_target}" if self.http_target else ""

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes this cluster's gateway, or "" when it serves no HTTP."""
        return f"{self.http_url}/metrics" if self.http_target else ""

    def ssl_context(self) -> ssl.SSLContext | None:
        """What an HTTPS client verifies the gateway with (None for a plaintext gateway)."""
        return client_ssl_context(self.tls_ca_path) if self.tls else None


def read_state(settings: Settings) -> ClusterState | None:
    """The gateway's record, or None when none is (a file that records only a Ray head included)."""
    record = _read(settings)
    head = _ray_head(record.pop("ray_head", None))
    try:
        return ClusterState(**record, ray_head=head)
    except TypeError:
        return None


def read_ray_head(settings: Settings) -> RayHead | None:
    """The Ray head `up` started for this home, if one is recorded (running or not)."""
    return _ray_head(_read(settings).get("ray_head"))


def write_state(settings: Settings, grpc_port: int, http_port: int | None,
                ray_head: RayHead | None = None) -> None:
    """Record where this cluster serves (the bound ports), for the CLI on this machine and for `down`;
    ``ray_head``: the head `up` started, which this gateway joined (kept in the file for `down`)."""
    state = ClusterState(
        pid=os.getpid(),
        grpc_target=f"{settings.grpc_host}:{grpc_port}",
        admin_token_path=str(settings.admin_token_path),
        started_at=time.time(),
        http_target=f"{settings.http_host}:{http_port}" if http_port else "",
        ray_head=ray_head,
        tls=bool(settings.tls_cert_path),
        tls_ca_path=(settings.tls_ca_path or settings.tls_cert_path) if settings.tls_cert_path else "",
    )
    record = dataclasses.asdict(state)
    if ray_head is None:
        del record["ray_head"]  # the file as it always was, for a reader that predates the head
    if not state.tls:
        del record["tls"], record["tls_ca_path"]  # likewise, for a reader that predates TLS
    _write(settings, record)


def write_ray_head(settings: Settings, head: RayHead) -> None:
    """Record the Ray head alone: no gateway serves it now (it is being started, or it stopped or died)."""
    _write(settings, {"ray_head": dataclasses.asdict(head)})


def remove_gateway(settings: Settings) -> None:
    """The gateway stops: its record goes, the Ray head's (if any) stays for the next `up` and for `down`."""
    head = read_ray_head(settings)
    if head is None:
        settings.state_path.unlink(missing_ok=True)
    else:
        write_ray_head(settings, head)


def _read(settings: Settings) -> dict[str, Any]:
    try:
        record = json.loads(settings.state_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _ray_head(raw: Any) -> RayHead | None:
    try:
        return RayHead(**raw) if isinstance(raw, dict) else None
    except TypeError:
        return None


def _write(settings: Settings, record: dict[str, Any]) -> None:
    tmp = settings.state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(settings.state_path)

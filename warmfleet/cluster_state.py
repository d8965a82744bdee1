"""Where a running cluster serves: the state file `warmfleet up` (the gateway process) writes in the home
folder, and the CLI and the Python client read to find it."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

from warmfleet.settings import Settings


@dataclass(frozen=True)
class ClusterState:
    """What `warmfleet up` recorded in ``$WARMFLEET_HOME/cluster.json``."""

    pid: int
    grpc_target: str
    admin_token_path: str
    started_at: float
    http_target: str = ""  # host:port of /metrics and /healthz; empty when the gateway could not bind it

    @property
    def metrics_url(self) -> str:
        """Where Prometheus scrapes this cluster's gateway, or "" when it serves no HTTP."""
        return f"http://{self.http_target}/metrics" if self.http_target else ""


def read_state(settings: Settings) -> ClusterState | None:
    try:
        return ClusterState(**json.loads(settings.state_path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def write_state(settings: Settings, grpc_port: int, http_port: int | None) -> None:
    """Record where this cluster serves (the bound ports), for the CLI on this machine and for `down`."""
    state = ClusterState(
        pid=os.getpid(),
        grpc_target=f"{settings.grpc_host}:{grpc_port}",
        admin_token_path=str(settings.admin_token_path),
        started_at=time.time(),
        http_target=f"{settings.http_host}:{http_port}" if http_port else "",
    )
    tmp = settings.state_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(state), indent=2))
    tmp.replace(settings.state_path)

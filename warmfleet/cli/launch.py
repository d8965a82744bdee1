"""`warmfleet up`, `down` and `status`: run the gateway process in the background and find it again.

When the settings name no Ray to join (``ray_address`` empty or "local"), `up` first starts a Ray head of
the home's own, as a process of its own (``ray start --head --block``, in a session of its own), and the
gateway joins it. So the gateway can crash, even by ``kill -9``, and Ray's processes stay: the controller,
the node agents and their warm instances. Had the gateway started Ray itself (``ray.init`` starting a
local cluster), Ray would die with it: its processes share the fate of the process that started them.

- `up` with the gateway dead and the recorded head healthy starts only a gateway, which finds the
  controller by name; with the head dead too, it stops what is left of both (their sessions' processes)
  and starts afresh.
- `down` stops the gateway (SIGTERM: it stops the controller and its agents in order), then the head
  (SIGTERM: it stops Ray's processes), and waits until every process of the head's session has gone;
  what is left after the timeout is killed.

A ``ray_address`` the user set (their own cluster) is joined as ever: `up` starts the gateway alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from warmfleet.client import Endpoint, TlsError, error_from_rpc
from warmfleet.cluster_state import ClusterState, RayHead, read_ray_head, read_state, write_ray_head
from warmfleet.errors import InvalidInput
from warmfleet.home import secure_home
from warmfleet.settings import Settings
from warmfleet.tls import read_pem

OWN_RAY_ADDRESSES = ("", "local")  # the settings name no Ray to join: `up` starts one for the home
KILL_WAIT_S = 10.0  # for processes sent SIGKILL to be gone
ORPHANS_WAIT_S = 5.0  # for the rest of a session to follow its leader out, before SIGKILL
RAY_STOP_TIMEOUT_S = 30.0  # the head's SIGTERM stops Ray's processes in a few seconds


class LaunchError(Exception):
    """`up` or `down` could not do what was asked; the message says why, in one line."""


def log_path(settings: Settings) -> Path:
    return settings.home / "logs" / "gateway.log"


def ray_log_path(settings: Settings) -> Path:
    """The output of the Ray head `up` starts; Ray's own logs are in its session folder."""
    return settings.home / "logs" / "ray-head.log"


SERVING = health_pb2.HealthCheckResponse.SERVING


def health(target: str | Endpoint, timeout_s: float = 1.0) -> int | None:
    """What the gRPC server at ``target`` ("host:port" in plaintext, or an ``Endpoint``, TLS maybe) says
    of its health (``HealthCheckResponse``'s status: a gateway says NOT_SERVING while its controller or
    its store is away, see /healthz); None when it does not answer. A Ray GCS answers too. A failed TLS
    handshake raises ``LaunchError`` saying why: waiting longer would not mend it."""
    endpoint = target if isinstance(target, Endpoint) else Endpoint(target)
    try:
        with endpoint.channel() as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
            return reply.status
    except grpc.RpcError as err:
        said = error_from_rpc(err, endpoint.target, endpoint.tls)
        if isinstance(said, TlsError):
            raise LaunchError(str(said)) from err
        return None


def healthy(target: str | Endpoint, timeout_s: float = 1.0) -> bool:
    """Whether the gRPC server at ``target`` says it is serving."""
    return health(target, timeout_s) == SERVING


def endpoint(state: ClusterState) -> Endpoint:
    """The recorded gateway as a client reaches it: over TLS, verified with the CA file `up` recorded,
    when it serves TLS."""
    roots = read_pem(state.tls_ca_path, "tls_ca_path (in cluster.json)") if state.tls else None
    return Endpoint(state.grpc_target, state.tls, roots)


def _alive(pid: int) -> bool:
    if pid <= 0:  # no process recorded (0 would signal our own process group)
        return False
    try:  # reap it first if it is our own exited child, so a zombie does not count as alive
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _stat(pid)
    return stat is None or stat[0] != "Z"  # a killed process init has not reaped yet is gone


def _is(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and is the process we recorded (its command line names ``marker``), not
    another that got its pid since; where /proc cannot tell, a running process counts."""
    if not _alive(pid):
        return False
    cmdline = _cmdline(pid)
    return cmdline is None or marker in cmdline


def running(settings: Settings) -> ClusterState | None:
    """The cluster `up` started from this home, if its gateway process is alive."""
    state = read_state(settings)
    if state is None or not _is(state.pid, "warmfleet"):
        return None
    return state


def settings_environ(settings: Settings) -> dict[str, str]:
    """Every setting as a ``WARMFLEET_*`` variable, so the background process gets all of them."""
    return {f"WARMFLEET_{f.name.upper()}": str(getattr(settings, f.name)) for f in dataclasses.fields(settings)}


def up(settings: Settings, timeout_s: float = 180.0) -> ClusterState:
    """Start the gateway process in the background (and the home's Ray head, unless the settings name a
    Ray to join) and wait until it serves. Idempotent; after a crash, reuses what still runs."""
    state = running(settings)
    # A gateway that answers runs, serving or degraded (its controller restarting, its disk full): kept.
    if state is not None and (health(endpoint(state)) is not None
                              or health(endpoint(state), timeout_s=5.0) is not None):
        return state
    deadline = time.monotonic() + timeout_s
    secure_home(settings.home)  # before anything is written there; the processes started inherit the umask
    _clean_gateway(read_state(settings))
    recorded = read_ray_head(settings)
    if settings.ray_address not in OWN_RAY_ADDRESSES:  # the user's cluster: a head of the home's is of no use
        if recorded is not None:
            _stop_ray_head(recorded)
        settings.state_path.unlink(missing_ok=True)
        return _start_gateway(settings, dict(os.environ), deadline, timeout_s)
    head = _ray_head(settings, recorded, deadline)
    settings = dataclasses.replace(settings, ray_address=head.address)
    try:
        return _start_gateway(settings, dict(os.environ, **ray_environ(settings)), deadline, timeout_s)
    except LaunchError:
        if recorded is None or recorded.pid != head.pid:  # a head started for this gateway goes with it
            _stop_ray_head(head)
            settings.state_path.unlink(missing_ok=True)
        raise


def down(settings: Settings, timeout_s: float = 60.0) -> bool:
    """Stop the cluster `up` started: the gateway, then the home's Ray head; False if nothing ran."""
    state, head = read_state(settings), read_ray_head(settings)
    stopped = False
    if state is not None:
        stopped = _end_session(state.pid, _is(state.pid, "warmfleet"), timeout_s)
    if head is not None:
        stopped = _stop_ray_head(head) or stopped
    settings.state_path.unlink(missing_ok=True)
    return stopped


def _start_gateway(settings: Settings, env: dict[str, str], deadline: float,
                   timeout_s: float) -> ClusterState:
    log = log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    env.update(settings_environ(settings))
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "warmfleet.cli", "serve"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LaunchError(f"the gateway exited with code {proc.returncode}; see {log}")
        state = read_state(settings)
        try:
            if state is not None and state.pid == proc.pid and healthy(endpoint(state)):
                return state
        except (LaunchError, InvalidInput):  # its TLS: this machine's clients could not reach it either
            proc.terminate()
            raise
        time.sleep(0.25)
    proc.terminate()
    raise LaunchError(f"the gateway did not become healthy within {timeout_s:.0f} s; see {log}")


def _clean_gateway(state: ClusterState | None) -> None:
    """A recorded gateway that is not serving: killed if it still runs (hung: it is treated as crashed,
    so that it does not stop the controller and its agents on its way out), and whatever its session
    left (a gateway that started Ray itself leaves Ray's agents behind) with it."""
    if state is not None:
        _end_session(state.pid, _is(state.pid, "warmfleet"), KILL_WAIT_S, signal.SIGKILL)


# The home's Ray head


def ray_environ(settings: Settings) -> dict[str, str]:
    """What the head and the gateway that joins it share: token authentication with a token of the home's
    (unless the user chose Ray's authentication mode), and a SIGTERM that stops the head at once (the
    gateway has stopped the actors in order by then; Ray would wait for the node to drain)."""
    drain = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
    env = {drain: os.environ.get(drain, "0")}
    if "RAY_AUTH_MODE" not in os.environ:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(_ray_token(settings)))
    return env


def ray_temp_dir(settings: Settings) -> Path:
    """Ray's temporary folder for this home: one per home, so its sessions and address file are nobody
    else's. Under the system's temporary folder, not the home: Ray's socket paths must stay short."""
    digest = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"warmfleet-ray-{digest}"


def _ray_token(settings: Settings) -> Path:
    path = settings.home / "ray_auth_token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path


def _ray_head(settings: Settings, head: RayHead | None, deadline: float) -> RayHead:
    """The recorded head if it runs and answers; else what is left of it stopped, and a new one."""
    if head is not None:
        if _is(head.pid, head.temp_dir) and head.address and healthy(head.address, timeout_s=5.0):
            write_ray_head(settings, head)  # the crashed gateway's record goes
            return head
        _stop_ray_head(head)
    return _start_ray_head(settings, deadline)


def _stop_ray_head(head: RayHead) -> bool:
    """Stop the head and every process of its session (what is left of them, after a crash)."""
    stopped = _end_session(head.pid, _is(head.pid, head.temp_dir), RAY_STOP_TIMEOUT_S)
    (Path(head.temp_dir) / "ray_current_cluster").unlink(missing_ok=True)  # the address of no cluster now
    return stopped


def _start_ray_head(settings: Settings, deadline: float) -> RayHead:
    temp_dir = ray_temp_dir(settings)
    _forget_sessions(temp_dir)
    address_file = temp_dir / "ray_current_cluster"  # where `ray start` writes the address once it is up
    address_file.unlink(missing_ok=True)
    log = ray_log_path(settings)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--port=0",
               f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
               # Ray always starts its client server; on a fixed port, two homes' heads would collide
               f"--ray-client-server-port={_free_port()}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(ray_environ(settings))
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    head = RayHead(pid=proc.pid, address="", temp_dir=str(temp_dir), started_at=time.time())
    write_ray_head(settings, head)  # recorded at once, so that `down` stops it even if `up` is interrupted
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _end_session(proc.pid, False, KILL_WAIT_S)
            raise LaunchError(f"the Ray head exited with code {proc.returncode}; see {log}")
        address = address_file.read_text().strip() if address_file.exists() else ""
        if address and healthy(address):
            head = dataclasses.replace(head, address=address)
            write_ray_head(settings, head)
            return head
        time.sleep(0.25)
    _end_session(proc.pid, True, RAY_STOP_TIMEOUT_S)
    raise LaunchError(f"the Ray head did not start in the time `up` had; see {log}")


def _forget_sessions(temp_dir: Path) -> None:
    """Keep the last head's session folder (its logs tell why it ended), remove the older ones."""
    latest = temp_dir / "session_latest"
    keep = latest.resolve() if latest.is_symlink() else None
    for session in temp_dir.glob("session_2*"):
        if session.resolve() != keep:
            shutil.rmtree(session, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


# Processes, as /proc shows them (elsewhere only the recorded pid is known)


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, from /proc/PID/stat; None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return fields[0], int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def session(leader: int) -> set[int]:
    """The running processes of the session ``leader`` started, itself included. `up` starts the gateway
    and the Ray head each in a session of its own, and every process below them stays in it (Ray's too,
    even one whose parent died), so this finds them all. The session id is the leader's pid, which the
    system gives no other process while a process of that session runs."""
    found = set()
    try:
        entries = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    except OSError:
        return found
    for pid in entries:
        stat = _stat(pid)
        if stat is not None and stat[1] == leader and stat[0] != "Z":
            found.add(pid)
    return found


def _end_session(leader: int, leader_is_ours: bool, timeout_s: float, sig: int = signal.SIGTERM) -> bool:
    """End the session ``leader`` started: ``sig`` (SIGTERM: it stops its own children in order) to the
    leader when it runs, then SIGKILL to what is left once it has gone (or after ``timeout_s``). With the
    leader gone already, what is left is a crash's: SIGKILL at once (Ray's agents orphaned by a dead
    raylet do not exit on SIGTERM). False if nothing ran. A leader that is not ours (its pid was given to
    another process since) is left alone, and so is its session."""
    if not leader_is_ours and _alive(leader):
        return False
    if not session(leader) and not (leader_is_ours and _alive(leader)):
        return False
    if leader_is_ours:
        _signal(leader, sig)
        if (_wait(lambda: not _alive(leader), timeout_s)
                and _wait(lambda: not session(leader), ORPHANS_WAIT_S)):
            return True
    for pid in session(leader) | {leader}:
        _signal(pid, signal.SIGKILL)
    if not _wait(lambda: not _alive(leader) and not session(leader), KILL_WAIT_S):
        raise LaunchError(f"the processes of session {leader} did not exit after SIGKILL")
    return True


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` (other processes change: there is no event to wait on) until true or timed out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass

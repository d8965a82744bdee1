"""One coglet prediction server (Cog's own runtime, ``python -m cog.server.http``) per instance, spoken to
over Cog's documented HTTP API (``docs/http.md``): ``GET /health-check`` until ``READY``, ``POST
/predictions`` with a client id (cancelable: ``POST /predictions/{id}/cancel``) and a webhook for output
and logs as they come, ``POST /shutdown``.

The process runs in its own session, so a stop (or a crash of the agent) takes its worker subprocess with
it. Its stdout and stderr go to a file beside the bundle, read back when setup fails.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from runners.cog.env import python_path

HEALTH_POLL_S = 0.02  # while setup runs: coglet answers the health check in well under a millisecond
STOP_GRACE_S = 5.0
SETUP_LOG_GRACE_S = 0.2


class SetupFailed(Exception):
    """The predictor's setup raised, or its process ended before it was ready; the message has its logs."""


class ProcessGone(Exception):
    """The coglet process is not there to answer (it crashed, or was killed)."""


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one coglet server."""

    bundle_dir: Path
    predict: str  # cog.yaml's "predict.py:Predictor"
    env_dir: Path | None = None  # the model's python_packages, if any
    max_concurrency: int = 1
    environment: tuple[tuple[str, str], ...] = ()  # cog.yaml's environment, then the node's device
    log_path: Path | None = None


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the agent that started it dies (Linux), so a killed
    agent leaves no coglet behind; coglet's worker exits on its own when coglet does."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CogProcess:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._tail = _LogTail()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        self.port = _free_port()
        bin_dir = str(Path(sys.executable).parent)  # coglet starts its worker with the `python` on PATH
        env = {**os.environ, **dict(self.spec.environment), "PORT": str(self.port),
               "COG_PREDICT_TYPE_STUB": self.spec.predict, "COG_MAX_CONCURRENCY": str(self.spec.max_concurrency),
               "COG_THROTTLE_RESPONSE_INTERVAL": "0", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": python_path(self.spec.bundle_dir, self.spec.env_dir),
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        log_path = self.spec.log_path or self.spec.bundle_dir.parent / f"{self.spec.bundle_dir.name}.log"
        self._log = log_path.open("ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1", "--await-explicit-shutdown", "true"],
            cwd=self.spec.bundle_dir, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def health(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        """coglet's health check, or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/health-check", timeout=timeout_s) as reply:
                return json.loads(reply.read())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout_s: float) -> str:
        """Wait for setup to finish; returns its logs. Raises ``SetupFailed`` with them when it fails."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise SetupFailed(f"the Cog process exited with code {code} during setup:\n{self.output_tail()}")
            doc = self.health()
            status = (doc or {}).get("status")
            if status in ("READY", "BUSY"):
                return self.setup_logs(doc)
            if status in ("SETUP_FAILED", "DEFUNCT"):
                time.sleep(SETUP_LOG_GRACE_S)  # coglet writes the last setup lines just after it fails
                raise SetupFailed(f"setup() failed ({status}):\n{self.setup_logs(doc) or self.output_tail()}")
            time.sleep(HEALTH_POLL_S)
        raise SetupFailed(f"setup() did not finish in {timeout_s:g} s:\n{self.output_tail()}")

    def setup_logs(self, health: dict[str, Any] | None) -> str:
        """The predictor's own output during setup (its prints, and the warnings and traceback coglet
        reports), without coglet's own lines."""
        reported = ((health or {}).get("setup") or {}).get("logs") or ""
        lines = _user_lines(self.output_tail(1 << 20))
        lines += [line for line in reported.splitlines()
                  if not line.startswith("[coglet") and not any(n in line for n in _COGLET_NOISE)]
        return "\n".join(line for line in lines if line.strip())

    def prediction_logs(self, prediction_id: str) -> list[str]:
        """Every line the predictor printed during a prediction that has ended, from coglet's log."""
        if self._log is None:
            return []
        self._log.flush()
        return self._tail.lines_of(Path(self._log.name), prediction_id)

    def output_tail(self, max_bytes: int = 8000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        path = Path(self._log.name)
        data = path.read_bytes()[-max_bytes:] if path.exists() else b""
        return data.decode(errors="replace")

    def stop(self) -> None:
        """Ask coglet to shut down; kill its process group if it has not within ``STOP_GRACE_S``."""
        if self._proc is None or self._proc.poll() is not None:
            self._close_log()
            return
        try:
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/shutdown", method="POST"), timeout=1.0)
            self._proc.wait(STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the process and its worker (one session)."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # Predictions (on the agent's event loop)

    async def predict(self, session: aiohttp.ClientSession, prediction_id: str, input: dict[str, Any],
                      webhook: str) -> dict[str, Any]:
        """Run one prediction to its end; returns coglet's final prediction object."""
        body = {"id": prediction_id, "input": input, "webhook": webhook,
                "webhook_events_filter": ["output", "logs"]}
        try:
            async with session.post(f"{self.url}/predictions", json=body) as reply:
                doc = await reply.json(content_type=None)
        except (aiohttp.ClientError, ConnectionError) as err:
            raise ProcessGone(str(err)) from err
        if reply.status >= 400 and "status" not in doc:
            doc = {"status": "failed", "error": doc.get("error") or doc.get("detail") or json.dumps(doc)}
        return doc

    async def cancel(self, session: aiohttp.ClientSession, prediction_id: str) -> None:
        try:
            async with session.post(f"{self.url}/predictions/{prediction_id}/cancel") as reply:
                await reply.read()
        except (aiohttp.ClientError, ConnectionError):
            pass  # gone already: nothing is left to cancel


class _LogTail:
    """Reads coglet's JSON log as it grows and sorts the predictor's output lines by prediction."""

    def __init__(self) -> None:
        self._offset = 0
        self._lines: dict[str, list[str]] = {}

    def lines_of(self, path: Path, prediction_id: str) -> list[str]:
        try:
            with path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return self._lines.pop(prediction_id, [])
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self._offset += end
        for raw in data[:end].splitlines():
            if b'"coglet::prediction"' not in raw or b'"source"' not in raw:
                continue
            try:
                fields = json.loads(raw)["fields"]
                self._lines.setdefault(fields["prediction_id"], []).append(fields["message"])
            except (ValueError, KeyError, TypeError):
                continue
        return self._lines.pop(prediction_id, [])


_USER_TARGETS = ('"coglet::user"', '"coglet::setup"')
_COGLET_NOISE = ("<string>:1: DeprecationWarning",)  # coglet's own shims, not the user's code


def _user_lines(log_text: str) -> list[str]:
    """What the predictor printed outside a prediction (during import and setup), from coglet's JSON log."""
    lines = []
    for raw in log_text.splitlines():
        if not any(t in raw for t in _USER_TARGETS) or any(n in raw for n in _COGLET_NOISE):
            continue
        try:
            lines.append(json.loads(raw)["fields"]["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return lines

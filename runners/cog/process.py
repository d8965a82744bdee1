"""One coglet prediction server (Cog's own runtime, ``python -m cog.server.http``) per instance, spoken to
over Cog's documented HTTP API (``docs/http.md``): ``GET /health-check`` until ``READY``, ``POST
/predictions`` with a client id (cancelable: ``POST /predictions/{id}/cancel``), ``POST /shutdown``.

coglet writes what the predictor prints as JSON lines on its own output, each naming its prediction.
A reader thread sorts them as they come: to the prediction that watches them (its log lines stream from
there, with no webhook per line), to the setup's lines, and to a short tail kept for diagnostics. Nothing
goes to disk: a Secret a predictor prints is never stored in the clear.

The process runs in its own session (a stop takes coglet's worker with it) and dies with the agent that
started it.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from runners.cog.env import python_path
from runners.cog.http import CogletClient, CogletUnreachable

HEALTH_POLL_S = 0.02  # while setup runs: coglet answers the health check in well under a millisecond
STOP_GRACE_S = 5.0
SETUP_LOG_GRACE_S = 0.2  # coglet writes the last setup lines just after it reports the failure
TAIL_LINES = 200  # coglet's own recent lines, kept for an error message
AT_CAPACITY_RETRIES = 8  # coglet frees a slot just after it answers: a 409 right then is retried
AT_CAPACITY_BACKOFF_S = 0.002
_PR_SET_PDEATHSIG = 1
_SETUP_TARGETS = ('"coglet::user"', '"coglet::setup"')
# coglet's own line for a prediction that ended; it comes after every line the predictor printed in it.
_ENDED = ("Prediction worker completed", "Prediction failed", "Prediction cancelled")
_COGLET_NOISE = ("<string>:1: DeprecationWarning",)  # coglet's own shims, not the user's code


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


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the agent that started it dies (Linux), so a killed
    agent leaves no coglet behind; coglet's worker exits on its own when coglet does."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OutputReader:
    """Sorts coglet's output lines (read on a thread of its own) by what they are about."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[str, Callable[[str | None], None]] = {}
        self._unclaimed: dict[str, list[str]] = {}  # lines of predictions no one watches (yet)
        self.setup_lines: list[str] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def watch(self, prediction_id: str, sink: Callable[[str | None], None]) -> None:
        """Send the prediction's lines to ``sink`` (called on the reader thread) from now on, then None
        once coglet says it ended (after its last line)."""
        with self._lock:
            self._sinks[prediction_id] = sink
            early = self._unclaimed.pop(prediction_id, [])
        for line in early:
            sink(line)

    def unwatch(self, prediction_id: str) -> None:
        with self._lock:
            self._sinks.pop(prediction_id, None)
            self._unclaimed.pop(prediction_id, None)

    def read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            self.take(raw.decode(errors="replace").rstrip("\n"))

    def take(self, line: str) -> None:
        try:
            doc = json.loads(line)
            fields, target = doc["fields"], doc.get("target", "")
        except (ValueError, KeyError, TypeError):
            self.tail.append(line)  # not coglet's JSON: the process's own output (a crash, a traceback)
            return
        message = str(fields.get("message", ""))
        if target == "coglet::prediction" and "prediction_id" in fields and (
                "source" in fields or message in _ENDED):
            self._to_prediction(str(fields["prediction_id"]), message if "source" in fields else None)
        elif f'"{target}"' in _SETUP_TARGETS and not any(n in message for n in _COGLET_NOISE):
            self.setup_lines.append(message)
        else:
            self.tail.append(message if "error" not in fields else f"{message}: {fields['error']}")

    def _to_prediction(self, prediction_id: str, message: str | None) -> None:
        with self._lock:
            sink = self._sinks.get(prediction_id)
            if sink is None:
                if message is not None:
                    self._unclaimed.setdefault(prediction_id, []).append(message)
                return
        sink(message)


class CogProcess:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.port = 0
        self.output = OutputReader()
        self.http: CogletClient | None = None  # made on start, used on the agent's loop
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

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
        self.http = CogletClient("127.0.0.1", self.port)
        bin_dir = str(Path(sys.executable).parent)  # coglet starts its worker with the `python` on PATH
        env = {**os.environ, **dict(self.spec.environment), "PORT": str(self.port),
               "COG_PREDICT_TYPE_STUB": self.spec.predict,
               "COG_MAX_CONCURRENCY": str(self.spec.max_concurrency),
               "COG_THROTTLE_RESPONSE_INTERVAL": "0", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": python_path(self.spec.bundle_dir, self.spec.env_dir),
               "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1",
             "--await-explicit-shutdown", "true"],
            cwd=self.spec.bundle_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self.output.read, args=(self._proc.stdout,), daemon=True,
                                        name=f"coglet-{self._proc.pid}")
        self._reader.start()

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
                raise SetupFailed(f"the Cog process exited with code {code} during setup:\n"
                                  f"{self.output_tail()}")
            doc = self.health()
            status = (doc or {}).get("status")
            if status in ("READY", "BUSY"):
                return self.setup_logs(doc)
            if status in ("SETUP_FAILED", "DEFUNCT"):
                time.sleep(SETUP_LOG_GRACE_S)
                raise SetupFailed(f"setup() failed ({status}):\n{self.setup_logs(doc) or self.output_tail()}")
            time.sleep(HEALTH_POLL_S)
        raise SetupFailed(f"setup() did not finish in {timeout_s:g} s:\n{self.output_tail()}")

    def setup_logs(self, health: dict[str, Any] | None) -> str:
        """The predictor's own output during import and setup (its prints, and the error coglet
        reports), without coglet's own lines."""
        reported = ((health or {}).get("setup") or {}).get("logs") or ""
        lines = list(self.output.setup_lines)
        lines += [line for line in reported.splitlines()
                  if not line.startswith("[coglet") and not any(n in line for n in _COGLET_NOISE)]
        return "\n".join(line for line in lines if line.strip())

    def output_tail(self, lines: int = 40) -> str:
        """coglet's last lines (and anything else the process wrote), for an error message."""
        return "\n".join(list(self.output.tail)[-lines:])

    def stop(self) -> None:
        """Ask coglet to shut down; kill its process group if it has not within ``STOP_GRACE_S``."""
        if self._proc is None or self._proc.poll() is not None:
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

    # Predictions (on the agent's event loop)

    async def predict(self, prediction_id: str, input: dict[str, Any], webhook: str = "") -> dict[str, Any]:
        """Run one prediction to its end; returns coglet's final prediction object. With ``webhook``,
        coglet posts the output there as it grows (for iterator outputs)."""
        body: dict[str, Any] = {"id": prediction_id, "input": input}
        if webhook:
            body |= {"webhook": webhook, "webhook_events_filter": ["output"]}
        for attempt in range(AT_CAPACITY_RETRIES + 1):
            status, doc = await self._post("/predictions", body)
            if status != 409 or attempt == AT_CAPACITY_RETRIES:
                break
            await asyncio.sleep(AT_CAPACITY_BACKOFF_S * 2 ** attempt)
        if status >= 400 and "status" not in doc:
            doc = {"status": "failed", "error": doc.get("error") or doc.get("detail") or json.dumps(doc)}
        return doc

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        assert self.http is not None
        try:
            status, doc = await self.http.post(path, body)
        except (CogletUnreachable, ValueError) as err:
            raise ProcessGone(str(err)) from err
        return status, doc if isinstance(doc, dict) else {"output": doc}

    async def cancel(self, prediction_id: str) -> None:
        try:
            await self._post(f"/predictions/{prediction_id}/cancel")
        except ProcessGone:
            pass  # gone already: nothing is left to cancel

    async def answers_health_check(self, timeout_s: float) -> bool:
        """Whether coglet answers its health check within ``timeout_s`` (from the agent's loop)."""
        assert self.http is not None
        try:
            await self.http.get("/health-check", timeout_s)
            return True
        except (CogletUnreachable, ValueError, TimeoutError):
            return False

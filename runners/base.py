"""The runner contract: load weights onto a device, declare schemas and a concurrency policy, and turn an
input into a stream of events ending in an output.

A runner's ``predict`` is one of:
- a generator, run on a worker thread of its node agent (never on an event loop): model compute. It
  yields ``RunnerEvent`` values (logs, output chunks, progress) and returns the final ``Output``.
  Cancellation is cooperative: the agent stops pulling from the generator at the next event, and
  ``PredictContext.sleep`` / ``check_cancelled`` let long steps notice a cancel sooner.
- an async generator, for runners that never block (``echo``): it runs on the agent's event loop, with
  no thread hop, yields events and then its ``Output`` last; cancel cancels it at its next await.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncGenerator, ClassVar, Generator, Protocol, Union

from warmfleet.domain import RouteSpec, Output, RunnerEvent


class Cancelled(Exception):
    """Raised inside a runner when its prediction was canceled."""


@dataclass(frozen=True)
class RunnerPolicy:
    """How an instance takes work: ``max_concurrency`` predictions at once."""

    max_concurrency: int = 1


@dataclass
class PredictContext:
    """What a running prediction can ask of its agent."""

    prediction_id: str
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking at once with ``Cancelled`` if the prediction is canceled meanwhile."""
        if self.cancel_event.wait(seconds):
            raise Cancelled()


class BundleSource(Protocol):
    """Where a node gets a pushed model's bundle (``warmfleet.bundle``) by its digest."""

    def fetch(self, digest: str, dest: Path) -> None:
        """Write the bundle's bytes to ``dest``. Runs on a loading thread; may block."""


@dataclass(frozen=True)
class NodeResources:
    """What a node offers its runners besides a device: a folder of its own for caches (bundles,
    environments, logs) and a source of pushed bundles."""

    cache_dir: Path
    bundles: BundleSource | None = None


PredictGenerator = Generator[RunnerEvent, None, Output]
AsyncPredictGenerator = AsyncGenerator[Union[RunnerEvent, Output], None]


class Runner(ABC):
    """One model family. Subclasses set ``family`` and register in ``runners.registry``."""

    family: ClassVar[str]
    # Whether ``load`` builds a model in this process (and so must not run beside another load: see
    # ``node.agent._LOAD_LOCK``); a runner whose model lives in a process of its own says False.
    loads_in_process: ClassVar[bool] = True

    def __init__(self, spec: RouteSpec, device: str = "cpu", node: NodeResources | None = None) -> None:
        self.spec = spec
        self.device = device
        self.node = node

    @classmethod
    @abstractmethod
    def input_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        """JSON Schema of the input; defaults in it are applied before ``predict`` sees the input."""

    @classmethod
    @abstractmethod
    def output_schema(cls, spec: RouteSpec) -> dict[str, Any]:
        """JSON Schema of the output value."""

    @classmethod
    def check_input(cls, spec: RouteSpec, input: dict[str, Any]) -> None:
        """Rules JSON Schema cannot state (one field against another), checked where the schema is,
        before the prediction is queued, on the input with defaults filled in. Raise ``InvalidInput``
        naming the field."""

    @classmethod
    def policy(cls, spec: RouteSpec) -> RunnerPolicy:
        return RunnerPolicy(max_concurrency=int(spec.options.get("max_concurrency", 1)))

    def load(self) -> None:
        """Load weights onto ``self.device``. Called once, on a worker thread, before any predict."""

    def unload(self) -> None:
        """Release what ``load`` took (GPU memory above all)."""

    def process_ids(self) -> list[int]:
        """The processes the model runs in, when not the agent's own (its agent measures their memory
        for placement); empty for a model loaded in the agent's process."""
        return []

    @abstractmethod
    def predict(self, input: dict[str, Any], ctx: PredictContext) -> PredictGenerator | AsyncPredictGenerator:
        """Yield events while working; return the output (or, as an async generator, yield it last)."""

"""The node agent: keeps runner instances warm on one device and runs predictions on them.

One agent per GPU (or one per host without a GPU) runs as a Ray actor pinned to its node (see
``scheduler.ray_adapter``); this class itself knows nothing of Ray, so tests drive it directly.
Model compute runs on per-instance worker threads; the agent's event loop only moves events.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from node.instance import InstanceLifecycle
from node.metrics import GPU_UNKNOWN, Nvml, host_memory, process_tree, rss_bytes
from node.outbox import Outbox
from runners.base import Cancelled, NodeResources, PredictContext, Runner
from runners.registry import runner_class
from warmfleet.domain import (
    Finished, InstanceInfo, InstanceState, Metrics, MetricsUpdate, RouteSpec, NodeInfo, Output, Rejected,
    Started, Status, Task, TaskEvent,
)
from warmfleet.errors import NotFound, error_code

log = logging.getLogger(__name__)


@dataclass
class _Instance:
    id: str
    spec: RouteSpec
    runner: Runner
    lifecycle: InstanceLifecycle
    executor: ThreadPoolExecutor
    running: dict[str, PredictContext] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)  # async runners' predictions

    def info(self, node_id: str, memory_bytes: int = 0) -> InstanceInfo:
        return InstanceInfo(
            id=self.id, model=self.spec.name, version=self.spec.version, node_id=node_id,
            state=self.lifecycle.state.value, max_concurrency=self.lifecycle.max_concurrency,
            in_flight=self.lifecycle.in_flight, memory_bytes=memory_bytes,
        )


class NodeAgent:
    """Loads instances, runs tasks on them and reports events to the routers that sent them."""

    def __init__(self, node_id: str, ray_node_id: str = "", address: str = "", device: str = "cpu",
                 nvml_index: int | None = None, resources: NodeResources | None = None) -> None:
        """``device`` is the torch device runners load onto; ``nvml_index`` the physical GPU to report;
        ``resources`` the cache folder and bundle source runners of pushed models need."""
        self.node_id = node_id
        self.resources = resources
        self.ray_node_id = ray_node_id
        self.address = address
        self.device = device
        self._nvml = Nvml(nvml_index)
        self._instances: dict[str, _Instance] = {}
        self._outboxes: dict[str, Outbox] = {}
        self._where: dict[str, _Instance] = {}  # prediction id -> instance it runs on

    # Instances

    async def load_instance(self, instance_id: str, spec: RouteSpec) -> InstanceInfo:
        """Load a runner instance; answers when it is idle (or raises if loading failed)."""
        cls = runner_class(spec.runner)
        policy = cls.policy(spec)
        inst = _Instance(
            id=instance_id, spec=spec, runner=cls(spec, self.device, self.resources),
            lifecycle=InstanceLifecycle(policy.max_concurrency),
            executor=ThreadPoolExecutor(policy.max_concurrency, thread_name_prefix=f"wf-{instance_id}"),
        )
        self._instances[instance_id] = inst
        try:
            await asyncio.get_running_loop().run_in_executor(inst.executor, _load_alone, inst.runner)
        except Exception as err:
            inst.lifecycle.load_failed(f"{type(err).__name__}: {err}")
            log.exception("loading %s (%s) failed", instance_id, spec.name)
            raise
        inst.lifecycle.loaded()
        return inst.info(self.node_id)

    async def unload_instance(self, instance_id: str) -> None:
        """Drain an instance: it takes no new work and unloads when its last prediction ends."""
        inst = self._instances.get(instance_id)
        if inst is None:
            raise NotFound(f"instance {instance_id} is not on node {self.node_id}")
        if inst.lifecycle.state in (InstanceState.IDLE, InstanceState.PROCESSING):
            inst.lifecycle.drain()
        elif inst.lifecycle.state is not InstanceState.DRAINING:
            inst.lifecycle.stop()
        self._reap(inst)

    def _reap(self, inst: _Instance) -> None:
        if inst.lifecycle.state is InstanceState.STOPPED and self._instances.get(inst.id) is inst:
            del self._instances[inst.id]
            inst.executor.submit(inst.runner.unload)
            inst.executor.shutdown(wait=False)

    async def instances(self) -> list[InstanceInfo]:
        return [inst.info(self.node_id, self._memory_of(inst)) for inst in self._instances.values()]

    def _memory_of(self, inst: _Instance) -> int:
        """What an instance's own processes use: GPU memory on a GPU node (NVML), else resident memory;
        0 for an instance in this process."""
        roots = inst.runner.process_ids()
        if not roots:
            return 0
        pids = [pid for root in roots for pid in process_tree(root)]
        if self._nvml.available:
            return self._nvml.process_memory_bytes(pids) or 0
        return rss_bytes(pids)

    async def info(self) -> NodeInfo:
        """What this node is and how busy: one NVML reading of its GPU, or the host's RAM on a CPU node.

        A GPU that NVML cannot read is ``gpu-unknown`` with no figures, so nothing is placed on memory
        it cannot see; ``metrics_note`` says why. Never raises for NVML's sake.
        """
        node = NodeInfo(id=self.node_id, ray_node_id=self.ray_node_id, address=self.address,
                        gpu_index=self._nvml.gpu_index, instance_count=len(self._instances))
        gpu = self._nvml.read()
        if gpu is not None:
            return replace(
                node, accelerator=gpu.name, hardware=gpu.hardware, gpu_uuid=gpu.uuid,
                memory_total_bytes=gpu.memory_total_bytes, memory_used_bytes=gpu.memory_used_bytes,
                utilization_percent=gpu.utilization_percent, temperature_c=gpu.temperature_c, power_w=gpu.power_w,
            )
        if self._nvml.gpu_index is not None:
            return replace(node, accelerator="gpu", hardware=GPU_UNKNOWN, metrics_note=self._nvml.note)
        total, used = host_memory()
        return replace(node, memory_total_bytes=total, memory_used_bytes=used, metrics_note=self._nvml.note)

    # Predictions

    def _outbox(self, router_id: str) -> Outbox:
        box = self._outboxes.get(router_id)
        if box is None:
            box = self._outboxes[router_id] = Outbox(asyncio.get_running_loop())
        return box

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        """Start tasks. One the agent cannot start is answered with a ``Rejected`` event, never dropped."""
        box = self._outbox(router_id)
        loop = asyncio.get_running_loop()
        for task in tasks:
            inst = self._instances.get(task.instance_id)
            if inst is None or inst.lifecycle.free_slots <= 0:
                state = inst.lifecycle.state.value if inst else "absent"
                closed = inst is None or not inst.lifecycle.accepting
                box.put(TaskEvent(task.prediction_id, Rejected(f"instance {task.instance_id} is {state}", closed)))
                continue
            inst.lifecycle.begin()
            ctx = PredictContext(task.prediction_id)
            inst.running[task.prediction_id] = ctx
            self._where[task.prediction_id] = inst
            if inspect.isasyncgenfunction(inst.runner.predict):
                fut = inst.tasks[task.prediction_id] = loop.create_task(_run_async(inst.runner, task, ctx, box))
            else:
                fut = loop.run_in_executor(inst.executor, _run_task, inst.runner, task, ctx, box)
            fut.add_done_callback(lambda f, inst=inst, pid=task.prediction_id: self._task_done(inst, pid, f, box))

    def _task_done(self, inst: _Instance, prediction_id: str, fut: asyncio.Future, box: Outbox) -> None:
        # The slot is freed before the router hears of the end, so its next dispatch finds it free.
        inst.running.pop(prediction_id, None)
        inst.tasks.pop(prediction_id, None)
        self._where.pop(prediction_id, None)
        inst.lifecycle.end()
        self._reap(inst)
        box.put(TaskEvent(prediction_id, fut.result()))

    async def cancel(self, prediction_ids: list[str]) -> None:
        """Ask running predictions to stop; each ends with a CANCELED ``Finished`` event."""
        for pid in prediction_ids:
            inst = self._where.get(pid)
            if inst is not None and pid in inst.running:
                inst.running[pid].cancel_event.set()
                if pid in inst.tasks:
                    inst.tasks[pid].cancel()

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        """Events for ``router_id`` since its last poll, waiting up to ``max_wait_s`` for one."""
        return await self._outbox(router_id).take(max_wait_s)


def _ended(started: float, status: Status, output: Output | None, error: str | _Failure,
           reported: dict[str, Any]) -> Finished:
    done = time.time()
    metrics = Metrics(**{**reported, "predict_time_s": done - started})
    if isinstance(error, _Failure):
        return Finished(status, started, done, output, error.text, metrics, error.code, error.field)
    return Finished(status, started, done, output, error, metrics)


def _report(task: Task, event: Any, box: Outbox, reported: dict[str, Any]) -> None:
    """Pass a runner's event on to the router, except metrics, which the agent keeps for ``Finished``."""
    if isinstance(event, MetricsUpdate):
        reported.update(event.values)
    else:
        box.put(TaskEvent(task.prediction_id, event))


@dataclass(frozen=True)
class _Failure:
    """Why a prediction failed: its text, and the code and field of a warmfleet error."""

    text: str
    code: str = ""
    field: str = ""


def _failed(task: Task, err: Exception) -> tuple[Status, _Failure]:
    log.warning("prediction %s failed:\n%s", task.prediction_id, traceback.format_exc())
    return Status.FAILED, _Failure(f"{type(err).__name__}: {err}", error_code(err), getattr(err, "field", ""))


async def _run_async(runner: Runner, task: Task, ctx: PredictContext, box: Outbox) -> Finished:
    """Run one prediction of a runner whose ``predict`` is an async generator (it never blocks the loop)
    on the agent's event loop; its last yielded ``Output`` is the result. Cancel cancels the task."""
    started = time.time()
    box.put(TaskEvent(task.prediction_id, Started(started)))
    status, output, error, reported = Status.SUCCEEDED, None, "", {}
    try:
        async for item in runner.predict(task.input, ctx):
            if isinstance(item, Output):
                output = item
            else:
                _report(task, item, box, reported)
    except (asyncio.CancelledError, Cancelled):
        status, error = Status.CANCELED, "canceled while processing"
    except Exception as err:
        status, error = _failed(task, err)
    return _ended(started, status, output, error, reported)


def _run_task(runner: Runner, task: Task, ctx: PredictContext, box: Outbox) -> Finished:
    """Run one prediction on a worker thread, reporting its events; returns how it ended."""
    started = time.time()
    box.put(TaskEvent(task.prediction_id, Started(started)))
    status, output, error, reported = Status.SUCCEEDED, None, "", {}
    try:
        gen = runner.predict(task.input, ctx)
        while True:
            if ctx.cancelled:
                gen.close()
                raise Cancelled()
            try:
                event = next(gen)
            except StopIteration as stop:
                output = stop.value
                break
            _report(task, event, box, reported)
    except Cancelled:
        status, error = Status.CANCELED, "canceled while processing"
    except Exception as err:
        status, error = _failed(task, err)
    return _ended(started, status, output, error, reported)


# One load at a time in this process. transformers and diffusers build big models on the "meta" device
# through accelerate's init_empty_weights, which patches torch.nn.Module for the whole process while it
# runs: two loads on two threads at once break each other ("Cannot copy out of meta tensor"). Loads are
# rare and mostly I/O; predictions on loaded instances go on meanwhile.
_LOAD_LOCK = threading.Lock()


def _load_alone(runner: Runner) -> None:
    if not runner.loads_in_process:
        runner.load()
        return
    with _LOAD_LOCK:
        runner.load()

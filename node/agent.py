"""The node agent: keeps runner instances warm on one device and runs predictions on them.

One agent per GPU (or one per host without a GPU) runs as a Ray actor pinned to its node (see
``scheduler.ray_adapter``); this class itself knows nothing of Ray, so tests drive it directly.
Model compute runs on per-instance worker threads; the agent's event loop only moves events.

A prediction canceled (by its router, or at its deadline) whose runner does not stop within
``cancel_grace_s`` is given up on: it ends CANCELED for its router at once, and its instance is restarted
under the same id (unloaded aside, loaded anew) once its other predictions are done; meanwhile the
instance rejects work as having no free slot, so routers wait for it rather than forget it.
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
from node.outbox import Batch, Outbox, ResumeRefused
from runners.base import Cancelled, NodeResources, PredictContext, Runner
from runners.registry import runner_class
from warmfleet.domain import (
    Finished, InstanceInfo, InstanceState, Metrics, MetricsUpdate, RouteSpec, NodeInfo, Output, Rejected,
    Started, Status, Task, TaskEvent,
)
from warmfleet.errors import NotFound, error_code

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 10.0  # a runner still going this long after its cancel is hung: its instance restarts
OUTBOX_GRACE_S = 60.0  # an outbox whose router is gone is kept this long, for it to come back for its events
UNLOAD_TIMEOUT_S = 30.0  # how long a hung instance's unload may take before its replacement loads anyway


@dataclass
class _Instance:
    id: str
    spec: RouteSpec
    runner: Runner
    lifecycle: InstanceLifecycle
    executor: ThreadPoolExecutor
    running: dict[str, PredictContext] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)  # async runners' predictions
    boxes: dict[str, Outbox] = field(default_factory=dict)  # the outbox of each running prediction's router
    # Predictions given up on as hung: ended for their router, maybe still on a worker thread.
    abandoned: set[str] = field(default_factory=set)
    restart: asyncio.Task | None = None  # its replacement, once a hung prediction made it due

    def info(self, node_id: str, memory_bytes: int = 0) -> InstanceInfo:
        return InstanceInfo(
            id=self.id, model=self.spec.name, version=self.spec.version, node_id=node_id,
            state=self.lifecycle.state.value, max_concurrency=self.lifecycle.max_concurrency,
            in_flight=self.lifecycle.in_flight, memory_bytes=memory_bytes,
        )


class NodeAgent:
    """Loads instances, runs tasks on them and reports events to the routers that sent them."""

    def __init__(self, node_id: str, ray_node_id: str = "", address: str = "", device: str = "cpu",
                 nvml_index: int | None = None, resources: NodeResources | None = None,
                 cancel_grace_s: float = CANCEL_GRACE_S, outbox_grace_s: float = OUTBOX_GRACE_S) -> None:
        """``device`` is the torch device runners load onto; ``nvml_index`` the physical GPU to report;
        ``resources`` the cache folder and bundle source runners of pushed models need."""
        self.node_id = node_id
        self._cancel_grace_s = cancel_grace_s
        self._outbox_grace_s = outbox_grace_s
        self.resources = resources
        self.ray_node_id = ray_node_id
        self.address = address
        self.device = device
        self._nvml = Nvml(nvml_index)
        self._instances: dict[str, _Instance] = {}
        self._outboxes: dict[str, Outbox] = {}
        self._where: dict[str, _Instance] = {}  # prediction id -> instance it runs on
        self._restarting: set[str] = set()  # ids of instances being replaced after a hung prediction

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
        if instance_id in self._restarting:
            self._restarting.discard(instance_id)  # its restart unloads it and loads no replacement
            if inst is None or inst.restart is not None:
                return
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
            box = self._outboxes[router_id] = Outbox(asyncio.get_running_loop(), router_id)
        return box

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        """Start tasks. One the agent cannot start is answered with a ``Rejected`` event, never dropped."""
        box = self._outbox(router_id)
        loop = asyncio.get_running_loop()
        for task in tasks:
            inst = self._instances.get(task.instance_id)
            if inst is None or inst.lifecycle.free_slots <= 0 or task.instance_id in self._restarting:
                box.put(TaskEvent(task.prediction_id, self._rejection(task.instance_id, inst)))
                continue
            inst.lifecycle.begin()
            ctx = PredictContext(task.prediction_id)
            inst.running[task.prediction_id] = ctx
            inst.boxes[task.prediction_id] = box
            box.active += 1
            self._where[task.prediction_id] = inst
            if inspect.isasyncgenfunction(inst.runner.predict):
                fut = loop.create_task(_run_async(inst.runner, task, ctx, box))
                inst.tasks[task.prediction_id] = fut
            else:
                fut = loop.run_in_executor(inst.executor, _run_task, inst.runner, task, ctx, box)
            fut.add_done_callback(
                lambda f, inst=inst, pid=task.prediction_id: self._task_done(inst, pid, f, box))

    def _rejection(self, instance_id: str, inst: _Instance | None) -> Rejected:
        """Why a task cannot start; ``instance_closed`` unless the instance will take work again."""
        if instance_id in self._restarting:
            return Rejected(f"instance {instance_id} is restarting", False)
        if inst is not None and inst.lifecycle.accepting:
            life = inst.lifecycle
            return Rejected(f"instance {instance_id} has no free slot ({life.in_flight} of "
                            f"{life.max_concurrency} busy)", False)
        return Rejected(f"instance {instance_id} is {inst.lifecycle.state.value if inst else 'absent'}", True)

    def _task_done(self, inst: _Instance, prediction_id: str, fut: asyncio.Future, box: Outbox) -> None:
        # The slot is freed before the router hears of the end, so its next dispatch finds it free.
        inst.running.pop(prediction_id, None)
        inst.tasks.pop(prediction_id, None)
        inst.boxes.pop(prediction_id, None)
        if self._where.get(prediction_id) is inst:
            del self._where[prediction_id]
        inst.lifecycle.end()
        if prediction_id in inst.abandoned:  # its router heard of its end when it was given up on
            inst.abandoned.discard(prediction_id)
        else:
            self._reap(inst)
            box.put(TaskEvent(prediction_id, fut.result()))
            self._task_left(box)
        if inst.id in self._restarting or inst.abandoned:
            self._maybe_restart(inst)

    async def cancel(self, prediction_ids: list[str]) -> None:
        """Ask running predictions to stop; each ends with a CANCELED ``Finished`` event, within
        ``cancel_grace_s`` even if its runner does not stop (then its instance is restarted)."""
        for pid in prediction_ids:
            inst = self._where.get(pid)
            ctx = inst.running.get(pid) if inst is not None else None
            if ctx is None or ctx.cancelled or pid in inst.abandoned:
                continue
            ctx.cancel_event.set()
            if pid in inst.tasks:
                inst.tasks[pid].cancel()
            asyncio.get_running_loop().call_later(self._cancel_grace_s, self._check_stopped, inst, pid, ctx)

    def _check_stopped(self, inst: _Instance, prediction_id: str, ctx: PredictContext) -> None:
        if inst.running.get(prediction_id) is not ctx or prediction_id in inst.abandoned:
            return  # it stopped
        log.error("prediction %s on %s did not stop within %.1f s of its cancel: restarting the instance",
                  prediction_id, inst.id, self._cancel_grace_s)
        inst.abandoned.add(prediction_id)
        box = inst.boxes[prediction_id]
        box.put(TaskEvent(prediction_id, Finished(
            Status.CANCELED, None, time.time(), error=f"canceled, but its runner did not stop within "
            f"{self._cancel_grace_s:g} s, so its instance {inst.id} is restarted")))
        self._task_left(box)
        if inst.lifecycle.state is not InstanceState.DRAINING and self._instances.get(inst.id) is inst:
            self._restarting.add(inst.id)  # a draining one is not replaced: it goes, as asked
        self._maybe_restart(inst)

    def _maybe_restart(self, inst: _Instance) -> None:
        """Replace an instance with a hung prediction once only hung ones are left on it."""
        if inst.restart is None and all(pid in inst.abandoned for pid in inst.running):
            inst.restart = asyncio.get_running_loop().create_task(
                self._restart(inst), name=f"restart-{inst.id}")

    async def _restart(self, old: _Instance) -> None:
        """Unload ``old`` aside (its own threads may be stuck), then load its replacement under its id."""
        if self._instances.get(old.id) is old:
            del self._instances[old.id]
        old.executor.shutdown(wait=False)
        await _unload_aside(old.runner)
        if old.id not in self._restarting:
            return  # it was draining, or unloaded meanwhile: it goes for good
        try:
            await self.load_instance(old.id, old.spec)
            log.info("instance %s (%s) restarted after a hung prediction", old.id, old.spec.name)
        except Exception:  # noqa: BLE001 - load_instance logged it; the instance stays failed
            pass
        finally:
            self._restarting.discard(old.id)

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        """Events for ``router_id`` since its last poll, waiting up to ``max_wait_s`` for one."""
        return await self._outbox(router_id).take(max_wait_s)

    # Sessions (``node.data_server``): what the agent holds for a router whose stream went away

    def open_session(self, router_id: str, resume: bool, after_seq: int) -> tuple[Outbox, int, list[Batch]]:
        """A router's session opens (``Outbox.attach``); raises ``ResumeRefused`` when it resumes one whose
        outbox was released. What the agent holds for the router is ``held``."""
        box = self._outboxes.get(router_id)
        if box is None and resume:
            raise ResumeRefused(f"node {self.node_id} holds nothing for router {router_id} any more: its "
                                f"stream was gone over {self._outbox_grace_s:g} s")
        box = box or self._outbox(router_id)
        if box.release_timer is not None:
            box.release_timer.cancel()
            box.release_timer = None
        generation, replay = box.attach(resume, after_seq)
        return box, generation, replay

    def held(self, router_id: str) -> dict[str, str]:
        """The router's predictions here (``dataplane.Welcome.held``): those running, by instance, and
        those that ended with their events not yet acknowledged (instance "")."""
        box = self._outboxes.get(router_id)
        if box is None:
            return {}
        held = dict.fromkeys(box.held(), "")
        held.update((pid, inst.id) for pid, inst in self._where.items()
                    if inst.boxes.get(pid) is box and pid not in inst.abandoned)
        return held

    @property
    def data_address(self) -> str:
        """The ``NodeData`` port's, in process: this agent object."""
        return f"in-process://{self.node_id}/{id(self)}"

    async def attach(self, router_id: str) -> dict[str, str]:
        """The ``NodeData`` port's first call, in process (no session to open): ``held``."""
        return self.held(router_id)

    def close_session(self, box: Outbox, generation: int) -> None:
        """Session ``generation`` ended: its outbox waits ``outbox_grace_s`` for the router to come back,
        counted from the end of the router's last task here, then goes."""
        if box.detach(generation) and not box.active:
            self._arm_release(box)

    def _task_left(self, box: Outbox) -> None:
        box.active -= 1
        if not box.active and not box.attached:
            self._arm_release(box)

    def _arm_release(self, box: Outbox) -> None:
        if box.release_timer is not None:
            box.release_timer.cancel()
        box.release_timer = asyncio.get_running_loop().call_later(self._outbox_grace_s, self._release, box)

    def _release(self, box: Outbox) -> None:
        box.release_timer = None
        if not box.attached and not box.active and self._outboxes.get(box.router_id) is box:
            del self._outboxes[box.router_id]

    def footprint(self) -> dict[str, int]:
        """The sizes of what the agent holds per router and per prediction (for tests and soak checks)."""
        return {"outboxes": len(self._outboxes),
                "events_held": sum(b.size() for b in self._outboxes.values()), "running": len(self._where)}


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


async def _unload_aside(runner: Runner) -> None:
    """``runner.unload`` on a thread of its own, waiting at most ``UNLOAD_TIMEOUT_S`` for it."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def unload() -> None:
        try:
            runner.unload()
        except Exception:  # noqa: BLE001 - logged; the replacement loads anyway
            log.exception("unloading a hung %s runner failed", runner.family)
        try:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))
        except RuntimeError:
            pass  # the loop closed meanwhile

    threading.Thread(target=unload, daemon=True, name=f"wf-unload-{runner.family}").start()
    try:
        await asyncio.wait_for(done, UNLOAD_TIMEOUT_S)
    except TimeoutError:
        log.error("a hung %s runner did not unload within %.0f s", runner.family, UNLOAD_TIMEOUT_S)


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

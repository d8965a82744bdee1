"""Ray behind one seam: every Ray call warmfleet makes (init, actors, ``.remote``, node listing) is here.

The controller, the router and the agents are plain classes; this module turns them into actors and
wraps their handles in the ports of ``scheduler.ports``, translating Ray's failures into ``NodeLost``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from node.agent import NodeAgent
from node.data_server import DataServer
from runners.base import NodeResources
from scheduler.controller import Controller
from scheduler.data_channel import DataChannel
from scheduler.ports import NodeLost, RoutingTable
from scheduler.route_journal import RouteJournal
from warmfleet.domain import DrainStatus, InstanceInfo, NodeInfo, RouteSpec, Task, TaskEvent
from warmfleet.errors import Unavailable
from warmfleet.tls import self_signed

log = logging.getLogger(__name__)

CONTROLLER_NAME = "warmfleet-controller"
_ACTOR_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)


def connect(address: str = "", namespace: str = "warmfleet", **init_kwargs: Any) -> None:
    """Join the Ray cluster at ``address`` ("auto": the one last started on this machine), or start a
    private local one when empty. Idempotent. Empty is never Ray's own ``None`` (which joins whatever
    cluster this machine last started, even a dead one, and hangs on it)."""
    if ray.is_initialized():
        return
    kwargs = dict(namespace=namespace, log_to_driver=False, configure_logging=False)
    kwargs.update(init_kwargs)
    ray.init(address=address or "local", **kwargs)


def shutdown() -> None:
    ray.shutdown()


async def _await(ref, node_id: str = ""):
    try:
        return await ref
    except _ACTOR_GONE as err:
        raise NodeLost(node_id or str(err)) from err
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):  # the error as the actor raised it, without Ray's traceback banner
            raise cause from None
        raise err.as_instanceof_cause() from None


# Node agents


# An agent's certificate is pinned, never vouched for by a CA: its expiry would guard nothing, and would
# cut a detached agent that runs for longer off its routers.
AGENT_CERT_DAYS = 100 * 365


class _RayNodeAgent(NodeAgent):
    """The agent as an actor: it learns its node and GPU from Ray, and serves the data plane (over TLS
    with ``data_plane_tls``)."""

    def __init__(self, node_id: str, use_gpu: bool, cache_dir: str, data_plane_tls: bool = False) -> None:
        ctx = ray.get_runtime_context()
        gpu_ids = ray.get_gpu_ids() if use_gpu else []
        _use_node_threads(ctx.get_node_id())
        super().__init__(
            node_id, ray_node_id=ctx.get_node_id(), address=ray.util.get_node_ip_address(),
            device="cuda:0" if gpu_ids else "cpu",  # Ray narrows CUDA_VISIBLE_DEVICES to our GPU
            nvml_index=int(gpu_ids[0]) if gpu_ids else None,
            resources=NodeResources(Path(cache_dir).expanduser(), RayBundleSource()),
        )
        # Admits routers to this agent's data plane; handed out only over Ray, inside the cluster.
        self._secret = secrets.token_urlsafe(32)
        # A key pair of the agent's own, made here and never sent anywhere: its certificate reaches the
        # routers over Ray, beside the secret, and they trust that certificate alone (pinned). No file
        # to copy to every node, and no CA that could vouch for another agent.
        self._tls = self_signed([self.address], AGENT_CERT_DAYS) if data_plane_tls else None
        self._data = DataServer(self, self._secret, self.address, self._tls)

    async def data_plane(self) -> tuple[str, str, bytes]:
        """Start the data plane server (once); where it listens, the secret it admits routers with, and
        the PEM certificate it serves TLS with (empty: plaintext)."""
        return await self._data.start(), self._secret, self._tls.certificate_pem if self._tls else b""

    async def pid(self) -> int:
        return os.getpid()


_AgentActor = ray.remote(_RayNodeAgent)


def runner_threads(node_cpus: float, node_gpus: int) -> int:
    """The CPU threads each agent's models may use: the node's CPUs shared by its agents (one per GPU, or
    one for a node without a GPU), at least one."""
    return max(1, int(node_cpus) // max(1, node_gpus))


def _use_node_threads(ray_node_id: str) -> None:
    """Let the agent's models use its share of the node's CPUs. Ray sets OMP_NUM_THREADS=1 in an actor
    that holds no CPU (the agent asks for none, so that it never blocks the node's tasks), and torch then
    runs every model on one thread: on a CPU node, half or less of the machine."""
    resources = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == ray_node_id), {})
    threads = runner_threads(resources.get("CPU", os.cpu_count() or 1), int(resources.get("GPU", 0)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    if "torch" in sys.modules:  # already imported (and its thread count read): set it directly
        sys.modules["torch"].set_num_threads(threads)


# Bundles of pushed models: chunks in Ray's object store, put there by the controller, which owns them,
# so they live as long as the cluster does (not as long as the gateway that took the push) and reach an
# agent on any node.

BUNDLE_CHUNK_BYTES = 8 << 20


class RayBundleSource:
    """An agent's ``BundleSource``: the chunks the controller holds for a digest, fetched in order."""

    def fetch(self, digest: str, dest: Path) -> None:
        controller = ray.get_actor(CONTROLLER_NAME)
        refs = ray.get(controller.bundle.remote(digest))
        if refs is None:
            raise FileNotFoundError(f"the cluster holds no bundle {digest}; push the version again")
        with dest.open("wb") as out:
            for ref in refs:
                out.write(ray.get(ref))


class RayNodeHandle:
    """A node agent actor, as both ports see it. ``NodeControl`` (the controller's): each call is a Ray
    call. ``NodeData`` (the router's, which gets this handle in the routing table): each call goes on the
    agent's data plane (``scheduler.data_channel``), a gRPC stream per router opened in the router's
    process; no prediction rides a Ray call. ``certificate``: the agent's own, which its data plane
    serves TLS with and the channels trust alone; empty for an agent that serves plaintext."""

    def __init__(self, handle: Any, node_id: str, data_address: str, secret: str,
                 certificate: bytes = b"") -> None:
        self._h = handle
        self.node_id = node_id
        self.data_address = data_address
        self._secret = secret
        self._certificate = certificate
        self._channels: dict[str, DataChannel] = {}

    def __getstate__(self) -> dict[str, Any]:  # channels belong to the process that opened them
        return {**self.__dict__, "_channels": {}}

    def _channel(self, router_id: str) -> DataChannel:
        channel = self._channels.get(router_id)
        if channel is None:
            channel = self._channels[router_id] = DataChannel(
                self.node_id, self.data_address, self._secret, router_id, certificate=self._certificate)
        return channel

    # NodeData

    async def attach(self, router_id: str) -> dict[str, str]:
        return await self._channel(router_id).attach(router_id)

    async def submit(self, router_id: str, tasks: list[Task]) -> None:
        await self._channel(router_id).submit(router_id, tasks)

    async def cancel(self, prediction_ids: list[str]) -> None:
        for channel in list(self._channels.values()):
            await channel.cancel(prediction_ids)

    async def poll(self, router_id: str, max_wait_s: float) -> list[TaskEvent]:
        return await self._channel(router_id).poll(router_id, max_wait_s)

    async def close(self) -> None:
        """Close the data channels this process opened to the agent (the agent keeps its sessions)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    # NodeControl

    async def load_instance(self, instance_id: str, spec: RouteSpec) -> InstanceInfo:
        return await _await(self._h.load_instance.remote(instance_id, spec), self.node_id)

    async def unload_instance(self, instance_id: str) -> None:
        await _await(self._h.unload_instance.remote(instance_id), self.node_id)

    async def instances(self) -> list[InstanceInfo]:
        return await _await(self._h.instances.remote(), self.node_id)

    async def info(self) -> NodeInfo:
        return await _await(self._h.info.remote(), self.node_id)


@dataclass(frozen=True)
class RayNode:
    node_id: str
    address: str
    gpus: int


def alive_nodes() -> list[RayNode]:
    return [
        RayNode(n["NodeID"], n["NodeManagerAddress"], int(n.get("Resources", {}).get("GPU", 0)))
        for n in ray.nodes() if n.get("Alive")
    ]


def node_liveness() -> dict[str, bool]:
    """Every Ray node the cluster lists (the dead ones for a while after they left), alive or not."""
    return {n["NodeID"]: bool(n.get("Alive")) for n in ray.nodes()}


# QUIET: the controller and the agents keep no task events. Ray's GCS keeps each actor call's events (a
# few KiB a call, measured: 20,000 calls grew it by 72 MiB, and by 1.5 MiB without them), and the
# control plane's calls never stop (routing-table polls, load reports, the agents' pings): with them,
# the GCS grew 38 MiB/h in the 20-minute soak. The cost: Ray's dashboard lists none of those calls.
AGENT_START_TIMEOUT_S = 60.0  # an agent not serving by then is stopped, and tried again next turn
AGENT_PREFIX = "warmfleet-agent-"


def _running_agent(agent_id: str) -> Any | None:
    """The agent actor of that id if one runs already (a controller that restarted finds it)."""
    try:
        return ray.get_actor(AGENT_PREFIX + agent_id)
    except ValueError:
        return None


def _start_agent(agent_id: str, node: RayNode, cache_dir: str, data_plane_tls: bool = False) -> Any:
    """A new agent actor, pinned to its node. It is detached: it outlives the controller that started it
    (whose restart finds it serving, its instances warm), and ``release`` stops it."""
    return _AgentActor.options(
        name=AGENT_PREFIX + agent_id, lifetime="detached", num_cpus=0, num_gpus=1 if node.gpus else 0,
        max_concurrency=1000, scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
        enable_task_events=False,  # see QUIET
    ).remote(agent_id, bool(node.gpus), cache_dir, data_plane_tls)


AGENT_PING_TIMEOUT_S = 2.0  # a ping not answered by then proves nothing (a busy agent): only a death does


async def _died(handle: Any) -> bool:
    """Whether an agent's actor is dead: a ping that Ray answers with its death (a cheap round trip)."""
    try:
        await asyncio.wait_for(handle.pid.remote(), AGENT_PING_TIMEOUT_S)
    except ActorUnavailableError:  # restarting, or out of reach for a moment: not proof of death
        return False
    except RayActorError:
        return True
    except TimeoutError:
        return False
    return False


class RayNodeProvisioner:
    """One agent actor per GPU of every alive node, or one per node without a GPU, pinned to it.

    The controller asks again every membership turn: a node that joined gets its agents, and an agent
    whose Ray node is listed dead (or no longer listed) is reported ``departed``. ``data_plane_tls``: the
    agents it starts serve their data plane over TLS (one already running, found again, keeps its way).
    """

    def __init__(self, cache_dir: str, data_plane_tls: bool = False) -> None:
        self._cache_dir = cache_dir  # the agents' cache folder on each node (shared by the agents of a node)
        self._data_plane_tls = data_plane_tls
        self._agents: dict[str, tuple[str, Any]] = {}  # agent id -> (its Ray node id, its actor handle)

    async def provision(self) -> list[RayNodeHandle]:
        """Start agents on the nodes that have none yet, all at once; one that fails to start is
        stopped and forgotten, so the next call tries again."""
        starting = []
        for node in await asyncio.to_thread(alive_nodes):  # a GCS round trip: off the event loop
            for slot in range(max(node.gpus, 1)):
                agent_id = f"{node.node_id[:8]}-{'gpu' + str(slot) if node.gpus else 'cpu'}"
                if agent_id in self._agents:
                    continue
                handle = await asyncio.to_thread(_running_agent, agent_id) or _start_agent(
                    agent_id, node, self._cache_dir, self._data_plane_tls)
                self._agents[agent_id] = (node.node_id, handle)
                starting.append((agent_id, handle))
        planes = await asyncio.gather(*(
            asyncio.wait_for(_await(handle.data_plane.remote(), agent_id), AGENT_START_TIMEOUT_S)
            for agent_id, handle in starting), return_exceptions=True)
        clients = []
        for (agent_id, handle), plane in zip(starting, planes):
            if isinstance(plane, BaseException):
                log.warning("the agent %s did not start: %r", agent_id, plane)
                await self.release(agent_id)
            else:
                clients.append(RayNodeHandle(handle, agent_id, *plane))
        return clients

    async def departed(self) -> set[str]:
        """Agents whose Ray node is dead, or whose own actor died (its process was killed: its node may
        live on). An empty node list (the GCS did not answer) departs no one by its node."""
        liveness = await asyncio.to_thread(node_liveness)
        agents = list(self._agents.items())
        died = await asyncio.gather(*(_died(handle) for _, (_, handle) in agents))
        return {agent_id for (agent_id, (ray_node_id, _)), dead in zip(agents, died)
                if dead or (liveness and not liveness.get(ray_node_id, False))}

    async def release(self, node_id: str) -> None:
        entry = self._agents.pop(node_id, None)
        if entry is not None:
            try:
                ray.kill(entry[1], no_restart=True)
            except Exception as err:  # noqa: BLE001 - an actor that died with its node needs no killing
                log.debug("stopping the agent %s: %r", node_id, err)


# The controller


class _RayController(Controller):
    def __init__(self, models: list[RouteSpec], journal_path: str = "", cache_dir: str = "",
                 data_plane_tls: bool = False) -> None:
        cache_dir = cache_dir or str(Path("~/.warmfleet/node").expanduser())
        super().__init__(models, RayNodeProvisioner(cache_dir, data_plane_tls),
                         journal=RouteJournal(journal_path) if journal_path else None)
        self._incoming_bundles: dict[str, list[Any]] = {}
        self._bundles: dict[str, list[Any]] = {}  # digest -> its chunks' object refs, owned here

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable:
        """As the controller's; after Ray restarted this actor (its process died), the first call starts
        it again: the gateways' routing-table calls never stop, so recovery begins at once."""
        if self._started is None and ray.get_runtime_context().was_current_actor_reconstructed:
            self._tasks.spawn(self.start(), "recover")  # idempotent: one start, whoever asks
        return await super().routing_table(since_revision, max_wait_s)

    async def pid(self) -> int:
        return os.getpid()

    async def bundle(self, digest: str) -> list[Any] | None:
        return self._bundles.get(digest)

    async def has_bundle(self, digest: str) -> bool:
        return digest in self._bundles

    async def add_bundle_chunk(self, digest: str, index: int, chunk: bytes) -> None:
        """The next chunk of a bundle being published: put into the object store, owned here."""
        chunks = self._incoming_bundles.setdefault(digest, [])
        if index != len(chunks):
            raise ValueError(f"bundle {digest}: chunk {index} arrived after {len(chunks)}")
        chunks.append(ray.put(chunk))

    async def seal_bundle(self, digest: str, count: int) -> None:
        chunks = self._incoming_bundles.pop(digest, [])
        if len(chunks) != count:
            raise ValueError(f"bundle {digest}: {len(chunks)} chunks arrived of {count}")
        self._bundles[digest] = chunks


_ControllerActor = ray.remote(_RayController)


class RayControllerClient:
    """A ``ControllerClient`` over the controller actor."""

    def __init__(self, handle: Any) -> None:
        self._h = handle

    @staticmethod
    async def _ask(ref: Any) -> Any:
        try:
            return await _await(ref)
        except NodeLost as err:
            raise Unavailable("the controller is unreachable (Ray restarts it when its process dies; "
                              f"try again in a few seconds): {err}") from err

    async def start(self) -> None:
        await self._ask(self._h.start.remote())

    async def models(self) -> list[RouteSpec]:
        return await self._ask(self._h.models.remote())

    async def routing_table(self, since_revision: int, max_wait_s: float) -> RoutingTable:
        return await self._ask(self._h.routing_table.remote(since_revision, max_wait_s))

    async def nodes(self) -> list[NodeInfo]:
        return await self._ask(self._h.nodes.remote())

    async def instances(self) -> list[InstanceInfo]:
        return await self._ask(self._h.instances.remote())

    async def report_load(self, router_id: str, ongoing: dict[str, int]) -> None:
        await self._ask(self._h.report_load.remote(router_id, ongoing))

    async def scaling(self) -> dict[str, int]:
        return await self._ask(self._h.scaling.remote())

    async def drain_node(self, node_id: str, wait: bool = True) -> DrainStatus:
        return await self._ask(self._h.drain_node.remote(node_id, wait))

    async def put_route(self, spec: RouteSpec, new: bool = False) -> RouteSpec:
        return await self._ask(self._h.put_route.remote(spec, new))

    async def delete_route(self, name: str) -> RouteSpec | None:
        return await self._ask(self._h.delete_route.remote(name))

    async def version(self, version_id: str) -> RouteSpec | None:
        return await self._ask(self._h.version.remote(version_id))

    async def publish_bundle(self, digest: str, path: Path) -> None:
        """Hand the bundle to the controller a chunk at a time (never in memory whole)."""
        if await self._ask(self._h.has_bundle.remote(digest)):
            return
        count = 0
        with path.open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, BUNDLE_CHUNK_BYTES):
                await self._ask(self._h.add_bundle_chunk.remote(digest, count, chunk))
                count += 1
        await self._ask(self._h.seal_bundle.remote(digest, count))

    async def pid(self) -> int:
        """The controller's process id (to find it on the machine)."""
        return await self._ask(self._h.pid.remote())

    async def shutdown(self) -> None:
        """Stop the agents, then the controller: the cluster goes down and leaves no actor behind."""
        try:
            await self._ask(self._h.stop_agents.remote())
        finally:
            self.kill()

    def kill(self) -> None:
        """Stop the controller alone (the agents stay, and a new controller finds them)."""
        ray.kill(self._h, no_restart=True)


def start_controller(models: list[RouteSpec], detached: bool = True, journal_path: str = "",
                     cache_dir: str = "", data_plane_tls: bool = False) -> RayControllerClient:
    """Create the named controller actor (``start`` it before use), on this process's node: a node with
    no actor of its own may be any other, and any other may leave the cluster (Ray Serve pins its
    controller to the head node for the same reason). ``data_plane_tls``: its agents serve the data plane
    over TLS (``_RayNodeAgent``); the routers follow each agent's way, told in the routing table."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # Ray restarts it when its process dies (``max_restarts``): its desired state comes back from the
    # arguments and its journal, its actual state from the agents, which outlive it.
    options: dict[str, Any] = dict(name=CONTROLLER_NAME, num_cpus=0, max_concurrency=1000,
                                   scheduling_strategy=here, max_restarts=-1, enable_task_events=False)
    if detached:
        options["lifetime"] = "detached"
    return RayControllerClient(_ControllerActor.options(**options).remote(models, journal_path, cache_dir,
                                                                          data_plane_tls))


def find_controller() -> RayControllerClient | None:
    try:
        return RayControllerClient(ray.get_actor(CONTROLLER_NAME))
    except ValueError:
        return None

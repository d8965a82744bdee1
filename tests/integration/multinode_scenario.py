"""More than one machine, on this one: Ray's multi-node test cluster (``ray.cluster_utils.Cluster``, a
raylet per node), a controller and a gateway on it, and steady predictions over gRPC while nodes join,
drain and leave. Prints one JSON object of what it saw and measured, on the line that starts with ``RESULT``.

``tests/integration/test_multinode.py`` runs it in a subprocess, because a process holds one Ray
connection and the test session's is to its own local Ray. Run it by hand with
``python -m tests.integration.multinode_scenario HOME``.

In order, on one cluster (booting nodes is what takes the time):
1. join: a head and worker A serve the echo model (two instances, one per node); worker B joins. Its
   agent should be listed within a few seconds.
2. drain: worker A is drained under load. Its instance's replacement lands on B (the least loaded
   node), so the node that joined takes work; every prediction succeeds; A ends with no instance.
3. loss: worker B is removed from the cluster under load. Every prediction ends, succeeded or failed
   with a reason naming B; the controller replaces the lost instance on the head (A is drained).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import ray
from ray.cluster_utils import Cluster

from gateway.server import Gateway
from scheduler import ray_adapter
from warmfleet.client import Client
from warmfleet.domain import RouteSpec
from warmfleet.settings import Settings
from warmfleet.v1 import cluster_pb2, cluster_pb2_grpc, predictions_pb2 as P, predictions_pb2_grpc, types_pb2 as T

ECHO = "warmfleet/echo"
NODE_MEMORY = dict(object_store_memory=80 * 1024 * 1024)
LIVE = ("starting", "idle", "processing")
TERMINAL = (T.STATUS_SUCCEEDED, T.STATUS_FAILED, T.STATUS_CANCELED, T.STATUS_ABORTED)
HANG_S = 20.0  # a prediction not ended by then counts as hung
RESULT = "multinode-result:"  # starts the result's line: Ray prints a lost raylet's last words on stdout too


@dataclass
class Api:
    target: str
    channel: grpc.aio.Channel
    token: str

    @property
    def md(self) -> tuple:
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def cluster(self):
        return cluster_pb2_grpc.ClusterStub(self.channel)

    @property
    def predictions(self):
        return predictions_pb2_grpc.PredictionsStub(self.channel)

    async def nodes(self) -> list:
        return list((await self.cluster.ListNodes(cluster_pb2.ListNodesRequest(), metadata=self.md)).nodes)

    async def instances(self) -> list:
        reply = await self.cluster.ListInstances(cluster_pb2.ListInstancesRequest(), metadata=self.md)
        return [i for i in reply.instances if i.model == ECHO]


@dataclass
class Load:
    """Steady predictions from ``workers`` clients, each waiting for its last to end before the next."""

    api: Api
    workers: int = 4
    delay_ms: int = 100
    ended: list[dict] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def start(self) -> None:
        self._stop.clear()
        self.ended = []
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]

    async def stop(self) -> list[dict]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.ended

    async def _worker(self, n: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            self.ended.append(await self._one(f"w{n}-{seq}"))

    async def _one(self, text: str) -> dict:
        started = time.monotonic()
        request = P.CreatePredictionRequest(
            model=ECHO, wait_s=HANG_S, input=T.PredictionInput(echo=T.EchoInput(text=text, delay_ms=self.delay_ms)))
        pred = await self.api.predictions.CreatePrediction(request, metadata=self.api.md)
        while pred.status not in TERMINAL and time.monotonic() - started < HANG_S:
            await asyncio.sleep(0.1)
            pred = await self.api.predictions.GetPrediction(P.GetPredictionRequest(id=pred.id), metadata=self.api.md)
        return {"id": pred.id, "status": T.Status.Name(pred.status), "error": pred.error,
                "seconds": round(time.monotonic() - started, 3)}


async def until(predicate, timeout_s: float, every_s: float = 0.1):
    """Seconds until ``await predicate()`` is true (raises TimeoutError after ``timeout_s``)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(every_s)
    return round(time.monotonic() - started, 2)


def agent_of(nodes: list, ray_node_id: str) -> str:
    return next((n.id for n in nodes if n.ray_node_id == ray_node_id), "")


async def sample_in_flight(api: Api, node_id: str, stop: asyncio.Event) -> int:
    """The most predictions seen running at once on ``node_id``'s instances while sampling."""
    most = 0
    while not stop.is_set():
        most = max([most] + [i.in_flight for i in await api.instances() if i.node_id == node_id])
        await asyncio.sleep(0.05)
    return most


async def scenario(cluster: Cluster, api: Api) -> dict:
    out: dict = {}
    head_id = cluster.head_node.node_id
    nodes = await api.nodes()
    head = agent_of(nodes, head_id)
    out["start"] = {"nodes": sorted(n.id for n in nodes),
                    "instances": sorted(i.node_id for i in await api.instances() if i.state in LIVE)}
    load = Load(api)
    load.start()

    # 1. A node joins: it gets an agent.
    # Ray starts the node's processes on this thread (it sets signal handlers), and registers it after.
    worker_b = cluster.add_node(num_cpus=1, resources={"worker_b": 1}, wait=False, **NODE_MEMORY)
    agent_b_seconds = await until(lambda: _has_agent(api, worker_b.node_id), timeout_s=30)
    agent_b = agent_of(await api.nodes(), worker_b.node_id)
    out["join"] = {"agent": agent_b, "join_to_agent_s": agent_b_seconds}

    # 2. Drain worker A under load: its instance moves to B.
    agent_a = out["agent_a"] = next(n for n in out["start"]["nodes"] if n not in (head,))
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(sample_in_flight(api, agent_b, stop_sampling))
    started = time.monotonic()
    reply = await api.cluster.DrainNode(cluster_pb2.DrainNodeRequest(node_id=agent_a, wait=True), metadata=api.md)
    drain_s = round(time.monotonic() - started, 2)
    with Client(api.target, api.token) as client:  # the Python client's call, as `warmfleet drain` makes it
        again = await asyncio.to_thread(client.cluster.drain, agent_a, wait=False)
    try:
        await api.cluster.DrainNode(cluster_pb2.DrainNodeRequest(node_id="no-such-node"), metadata=api.md)
        unknown = "OK"
    except grpc.aio.AioRpcError as err:
        unknown = err.code().name
    await asyncio.sleep(1.0)  # B serves for a while
    stop_sampling.set()
    after = await api.instances()
    out["drain"] = {
        "reply": {"node_id": reply.node_id, "instances_left": reply.instances_left, "done": reply.done},
        "drain_s": drain_s,
        "asked_again": {"instances_left": again.instances_left, "done": again.done},
        "unknown_node": unknown,
        "instances_on_a": [i.id for i in after if i.node_id == agent_a],
        "node_a_instance_count": next(n.instance_count for n in await api.nodes() if n.id == agent_a),
        "live_by_node": _by_node(after),
        "b_in_flight_max": await sampler,
        "predictions": await load.stop(),
    }

    # 3. Worker B leaves the cluster under load.
    load.start()
    await asyncio.sleep(0.5)
    removed_at = time.monotonic()
    await asyncio.to_thread(cluster.remove_node, worker_b)
    removal_s = round(time.monotonic() - removed_at, 2)

    async def recovered() -> bool:
        live = [i for i in await api.instances() if i.state in ("idle", "processing")]
        return len(live) == 2 and all(i.node_id == head for i in live)

    await until(recovered, timeout_s=30)
    recovery_s = round(time.monotonic() - removed_at, 2)  # from the call to remove B, not its return
    await asyncio.sleep(1.0)  # predictions flow on the replacement
    out["loss"] = {
        "agent": agent_b, "head": head, "remove_node_s": removal_s, "recovery_s": recovery_s,
        "nodes_after": sorted(n.id for n in await api.nodes()),
        "live_by_node": _by_node(await api.instances()),
        "predictions": await load.stop(),
    }
    return out


async def _has_agent(api: Api, ray_node_id: str) -> bool:
    return bool(agent_of(await api.nodes(), ray_node_id))


def _by_node(instances: list) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in instances:
        if i.state in LIVE:
            counts[i.node_id] = counts.get(i.node_id, 0) + 1
    return counts


async def main(home: Path) -> dict:
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=2, include_dashboard=False, **NODE_MEMORY))
    cluster.add_node(num_cpus=1, resources={"worker_a": 1}, **NODE_MEMORY)
    ray_adapter.connect(cluster.address, "warmfleet-multinode")
    controller = ray_adapter.start_controller(
        [RouteSpec(ECHO, "echo", options={"max_concurrency": 4}, min_instances=2)], detached=False)
    await controller.start()
    gateway = Gateway(Settings(home=home, grpc_port=0, http_port=0), controller)
    port = await gateway.start()
    token = gateway.settings.admin_token_path.read_text().strip()
    target = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(target)
    setup_s = round(time.monotonic() - t0, 2)
    try:
        result = await scenario(cluster, Api(target, channel, token))
        result["setup_s"] = setup_s
        return result
    finally:
        await channel.close()
        await gateway.stop(grace_s=1.0)
        await controller.shutdown()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(RESULT, json.dumps(asyncio.run(main(Path(sys.argv[1])))), flush=True)

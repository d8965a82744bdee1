"""`warmfleet serve`, the gateway process: joins (or starts) Ray, assembles the served models (the
built-in ones and the cluster config file's), starts the controller and its agents, serves gRPC until
SIGTERM or SIGINT, then shuts down in order. `warmfleet up` runs this in the background.

Which gateway stops the cluster: the one that owns it. A gateway owns the controller it created, and it
owns the cluster of the Ray head `up` started for this home (the state file records that head, at the
address this gateway joined) whether it created the controller or found it running: a gateway that `up`
restarted after a crash found the controller and its agents warm, and `down` must still stop them in
order. A gateway that joined a cluster another gateway serves leaves it running."""

from __future__ import annotations

import asyncio
import logging
import signal

from gateway.server import Gateway
from scheduler import ray_adapter
from warmfleet.cli.cluster_config import load_cluster_config
from warmfleet.cli.defaults import default_models, prepare_default_weights
from warmfleet.cluster_state import RayHead, read_ray_head, remove_gateway, write_state
from warmfleet.domain import RouteSpec
from warmfleet.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    ray_adapter.connect(settings.ray_address, settings.ray_namespace)
    head = home_ray_head(settings)
    controller = ray_adapter.find_controller()  # another gateway's, or the crashed one's that `up` replaced
    created = controller is None
    if created:
        models = served_models(settings)
        if any(m.weights.startswith(str(settings.models_path)) for m in models):
            prepare_default_weights(settings)  # the built-in tiny models, generated on first use
        controller = ray_adapter.start_controller(models, journal_path=str(settings.routes_path),
                                                  cache_dir=str(settings.node_cache_path),
                                                  data_plane_tls=settings.data_plane_tls)
        await controller.start()
    gateway = Gateway(settings, controller)
    port = await gateway.start()
    write_state(settings, port, gateway.http_port, head)
    log.info("serving gRPC%s on %s:%d", " over TLS" if gateway.tls else "", settings.grpc_host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await gateway.stop()
    if created or head is not None:  # this gateway owns the cluster (see the module's docstring)
        await controller.shutdown()
    remove_gateway(settings)
    ray_adapter.shutdown()


def home_ray_head(settings: Settings) -> RayHead | None:
    """The Ray head `up` started for this home, when it is the Ray this gateway joined."""
    head = read_ray_head(settings)
    return head if head is not None and head.address and head.address == settings.ray_address else None


def served_models(settings: Settings) -> list[RouteSpec]:
    """The built-in models, and what the cluster config file adds (or keeps them out)."""
    models = default_models(settings)
    if settings.cluster_config:
        models = load_cluster_config(settings.cluster_config, models)
    return models


def main(settings: Settings) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # a faster event loop where it is installed (Linux, macOS)
    except ImportError:
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))

"""The gateway process: the grpc.aio server, with health checking and reflection, wired to the store,
the router and the controller; and beside it, on the same loop, the HTTP side (``/metrics``, ``/healthz``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import uuid
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.accounts import Accounts
from gateway.catalog import ModelCatalog
from gateway.events import EventHub
from gateway.files import FileStore, InputResolver, Retention
from gateway.http import HttpServer, build_app
from gateway.grpc.interceptors import GatewayInterceptor
from gateway.grpc.servicers import (
    AccountsServicer, ClusterServicer, DeploymentsServicer, ModelsServicer, PredictionsServicer,
)
from gateway.load_report import LoadReporter
from gateway.metrics import GatewayMetrics
from gateway.rest import shapes
from gateway.rest.app import add_rest_routes
from gateway.rest.context import RestContext
from gateway.web.app import add_console_routes
from gateway.web.context import ConsoleContext
from gateway.predictions import PredictionService
from gateway.limits import AccountLimits
from gateway.deployments import RouteService
from gateway.push import PushService
from gateway.signing import UrlSigner, key_path, load_key
from gateway.store import PredictionStore
from gateway.tls import ServerTls, add_port
from gateway.webhooks import WebhookSecrets, WebhookSender, secret_path
from scheduler.ports import ControllerClient
from scheduler.router import Router
from warmfleet.home import secure_home
from warmfleet.settings import Settings
from warmfleet.v1 import (
    accounts_pb2, accounts_pb2_grpc, cluster_pb2, cluster_pb2_grpc, deployments_pb2, deployments_pb2_grpc,
    models_pb2, models_pb2_grpc, predictions_pb2, predictions_pb2_grpc,
)

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    predictions_pb2.DESCRIPTOR.services_by_name["Predictions"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["Models"].full_name,
    cluster_pb2.DESCRIPTOR.services_by_name["Cluster"].full_name,
    accounts_pb2.DESCRIPTOR.services_by_name["Accounts"].full_name,
    deployments_pb2.DESCRIPTOR.services_by_name["Deployments"].full_name,
)
SHUTDOWN_REASON = "the gateway shut down while the prediction was in flight; run it again"


class Gateway:
    """Everything one gateway process serves. ``start`` binds and returns the gRPC port; ``http_port`` is the
    HTTP side's bound port (None when it could not bind)."""

    def __init__(self, settings: Settings, controller: ControllerClient) -> None:
        self.settings = settings
        self.controller = controller
        self.store = PredictionStore(settings.store_path)
        self.accounts = Accounts(settings.accounts_path)
        self.catalog = ModelCatalog()
        self.hub = EventHub()
        # Signs the links clients follow without the token (REST responses, webhook bodies).
        self.signer = UrlSigner(load_key(key_path(settings.home)))
        links = self.signer.links(settings.signed_url_ttl_s)
        self.webhooks = WebhookSender(WebhookSecrets(secret_path(settings.home)),
                                      render=functools.partial(
                                          shapes.prediction_response, sign=links,
                                          inline_max_bytes=settings.inline_output_max_bytes),
                                      allow_private=settings.allow_private_urls,
                                      completed_done=self.store.webhook_done)
        # The Files API's store and its sweep serve gRPC predictions too: started here, whatever HTTP does.
        self.limits = AccountLimits.from_settings(settings)
        self.files = FileStore(settings.files_path, ttl_s=settings.file_ttl_s, limits=self.limits)
        self.resolver = InputResolver.from_settings(settings, self.files)
        self.retention = Retention(self.store, self.files, settings.retention_s, settings.retention_interval_s)
        self.routes = RouteService(controller, self.catalog, changed=self._follow_now)
        self.pusher = PushService(self.routes, settings.bundles_path, settings.node_cache_path / "cog" / "envs",
                                  controller.publish_bundle, controller.nodes, catalog=self.catalog)
        self.router: Router | None = None
        self.service: PredictionService | None = None
        self.server: grpc.aio.Server | None = None
        self.health = health.aio.HealthServicer()
        self.metrics: GatewayMetrics | None = None
        self.http: HttpServer | None = None
        self.load_reporter: LoadReporter | None = None
        self.port = 0
        self.http_port: int | None = None
        # Both ports' TLS, or None (plaintext): the pair is checked here, before anything binds.
        self.tls = ServerTls.from_settings(settings)
        self._serving = False
        self._controller_away = ""  # why the controller does not answer, "" while it does
        self._health_said: str | None = None  # the reason the health service last said (None: not yet)
        self._refresher: asyncio.Task | None = None
        self._store_watch: asyncio.Task | None = None

    async def start(self) -> int:
        secure_home(self.settings.home)
        reopened = await self.store.open()
        await self.accounts.open(await self.store.legacy_tokens())
        await self.ensure_admin_token()
        self.router = Router(router_id(self.settings.home), self._on_task_event, self.settings.max_queue_per_model)
        self.metrics = GatewayMetrics(self.controller, self.router)
        self.load_reporter = LoadReporter(self.router, self.controller)
        self.service = PredictionService(self.store, self.router, self.catalog, self.hub,
                                         metrics=self.metrics.predictions,
                                         on_cold=self.load_reporter.report_now, webhooks=self.webhooks,
                                         limits=self.limits)
        await self.webhooks.start()
        await self.files.open()
        self.retention.start()
        models = await self.controller.models()
        await self._republish_bundles(models)
        self.catalog.update(models)
        taken = self.service.recover(reopened.unfinished)  # before the first table: see Router.recover
        self.router.recover(taken)
        for pred in reopened.webhooks_due:
            self.webhooks.resend_completed(pred)
        if reopened.unfinished or reopened.webhooks_due:
            log.warning("taking up %d predictions the gateway before left unfinished (%d could not run "
                        "again) and sending %d completed webhooks still due", len(reopened.unfinished),
                        len(reopened.unfinished) - len(taken), len(reopened.webhooks_due))
        self.router.update_table(await self.controller.routing_table(-1, 0.0))
        self._refresher = asyncio.create_task(self._follow_routing_table(), name="routing-table")
        self.load_reporter.start()
        self.server = self._build_server()
        self.port = add_port(self.server, f"{self.settings.grpc_host}:{self.settings.grpc_port}", self.tls)
        await self.server.start()
        self._serving = True
        await self._say_health()
        self._store_watch = asyncio.create_task(self._watch_store(), name="store-health")
        await self._start_http()
        return self.port

    # Health: SERVING, or NOT_SERVING while the controller does not answer (predictions still queue, and
    # run on the instances already warm) or the store cannot write (creates are refused), and as it stops.

    def not_serving(self) -> str:
        """Why this gateway does not serve fully now; "" when it does."""
        if not self._serving:
            return "the gateway is not started, or is stopping"
        if self._controller_away:
            return f"the controller does not answer ({self._controller_away}); predictions queue meanwhile"
        health = self.store.health()
        return "" if health.ok else f"the prediction store cannot write: {health.reason}"

    async def _say_health(self) -> None:
        """Tell the health service what ``not_serving`` says, when that changed."""
        reason = self.not_serving()
        if reason == self._health_said:
            return
        self._health_said = reason
        if reason and self._serving:  # degraded (not merely stopping)
            log.warning("health: NOT_SERVING: %s", reason)
        status = health_pb2.HealthCheckResponse.NOT_SERVING if reason else health_pb2.HealthCheckResponse.SERVING
        for name in ("",) + SERVICE_NAMES:
            await self.health.set(name, status)

    async def _watch_store(self) -> None:
        while True:
            for ok in (False, True):
                await self.store.wait_health(ok)
                await self._say_health()

    async def _republish_bundles(self, models) -> None:
        """Hand the cluster the bundles of the pushed versions it serves, from this gateway's store: a
        controller that restarted (``warmfleet down`` and ``up``) kept its routes but not the bundles."""
        for digest in sorted({m.options["bundle"] for m in models if m.runner == "cog"}):
            path = self.settings.bundles_path / f"{digest}.tar"
            if path.exists():
                await self.controller.publish_bundle(digest, path)
            else:
                log.warning("the bundle %s is not in %s: agents without it cached cannot boot it",
                            digest, self.settings.bundles_path)

    async def _start_http(self) -> None:
        """Serve /metrics and /healthz. A port already taken costs the metrics, not the predictions: the
        gateway serves gRPC without them and says so."""
        host, port = self.settings.http_host, self.settings.http_port
        # A JSON body carries its files as data URLs: base64 is 4/3 of the bytes, plus the JSON around them.
        app = build_app(self.metrics, self.not_serving,
                        max_body_bytes=self.settings.max_input_file_bytes * 4 // 3 + 1024**2)
        add_rest_routes(app, self._rest_context())
        add_console_routes(app, self._console_context())
        http = HttpServer(app)
        try:
            self.http_port = await http.start(host, port, self.tls.ssl_context() if self.tls else None)
        except OSError as err:
            log.error("could not serve HTTP on %s:%d (%s): this gateway serves no /metrics or /healthz; "
                      "set http_port (WARMFLEET_HTTP_PORT) to a free port, or 0", host, port, err)
            return
        self.http = http
        scheme = "https" if self.tls else "http"
        self.webhooks.base_url = f"{scheme}://{host}:{self.http_port}"  # the links in webhook bodies
        log.info("serving %s (/metrics, /healthz, /v1, the web console at /) on %s:%d", scheme.upper(), host,
                 self.http_port)

    def _on_task_event(self, prediction_id, body) -> None:
        self.service.on_task_event(prediction_id, body)

    def _rest_context(self) -> RestContext:
        """What the REST routes call: the same core services the gRPC servicers call."""
        return RestContext(
            settings=self.settings, accounts=self.accounts, predictions=self.service, catalog=self.catalog,
            routes=self.routes, pusher=self.pusher, controller=self.controller, files=self.files,
            resolver=self.resolver, webhooks=self.webhooks, signer=self.signer)

    def _console_context(self) -> ConsoleContext:
        """What the web console's pages call: the same core services again."""
        return ConsoleContext(
            settings=self.settings, accounts=self.accounts, predictions=self.service, catalog=self.catalog,
            routes=self.routes, controller=self.controller, resolver=self.resolver,
            queue_length=self.router.queue_length, grpc_port=self.port)

    def _build_server(self) -> grpc.aio.Server:
        server = grpc.aio.server(interceptors=[GatewayInterceptor(self.accounts)],
                                 options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                                          ("grpc.max_send_message_length", self.settings.max_message_bytes)])
        predictions_pb2_grpc.add_PredictionsServicer_to_server(PredictionsServicer(self.service), server)
        models = ModelsServicer(self.catalog, self.routes, self.pusher)
        models_pb2_grpc.add_ModelsServicer_to_server(models, server)
        deployments_pb2_grpc.add_DeploymentsServicer_to_server(DeploymentsServicer(self.routes), server)
        cluster_pb2_grpc.add_ClusterServicer_to_server(ClusterServicer(self.controller), server)
        accounts_pb2_grpc.add_AccountsServicer_to_server(AccountsServicer(self.accounts), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            SERVICE_NAMES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                             reflection.SERVICE_NAME), server)
        return server

    async def ensure_admin_token(self) -> None:
        """On first start, create the admin token and write it (mode 0600) for the CLI on this machine."""
        path = self.settings.admin_token_path
        if self.accounts.has_admin() and path.exists():
            return
        token = await self.accounts.bootstrap_admin()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")

    async def _follow_now(self) -> None:
        """Take the controller's state at once (after a change made through this gateway): a prediction
        created next must not meet a route, a version or a load failure as they were before it."""
        table = await self.controller.routing_table(-1, 0.0)
        if table.models is not None:
            self.catalog.update(table.models)
        self.router.update_table(table)

    async def _follow_routing_table(self) -> None:
        while True:
            try:
                table = await self.controller.routing_table(self.router.revision, 30.0)
                if table.models is not None:
                    self.catalog.update(table.models)  # before the router: a new route validates at once
                self.router.update_table(table)
                if self._controller_away:
                    log.info("the controller answers again")
                    self._controller_away = ""
                    await self._say_health()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - the controller restarts by itself: ask again
                if not self._controller_away:
                    log.warning("could not refresh the routing table (%r); retrying every second", err)
                self._controller_away = str(err) or type(err).__name__
                await self._say_health()
                await asyncio.sleep(1.0)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop serving: finish RPCs within ``grace_s``, fail what is still active (persisted), close."""
        self._serving = False
        await self._say_health()
        if self._store_watch:
            self._store_watch.cancel()
        if self.server:
            await self.server.stop(grace_s)
        if self.http:
            await self.http.stop()
        if self._refresher:
            self._refresher.cancel()
        if self.load_reporter:
            await self.load_reporter.stop()
        if self.service:
            await self.service.fail_all_active(SHUTDOWN_REASON)
        await self.webhooks.stop()  # after the above: their completed webhooks get a moment to go out
        await self.retention.stop()
        self.files.close()
        if self.router:
            await self.router.close()
        await self.store.close()
        await self.accounts.close()


def router_id(home: Path) -> str:
    """This gateway's router id, kept in its home: a gateway that restarts is the same router to the
    agents, which kept its predictions' runs and events for it (see ``Router.recover``)."""
    path = home / "router_id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        rid = f"gateway-{uuid.uuid4().hex[:12]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(rid + "\n")
        tmp.replace(path)
        return rid

"""A real local Ray, a real controller with its node agents, and real gateways on 127.0.0.1, port 0."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import ray

from gateway.server import Gateway
from scheduler import ray_adapter
from warmfleet.domain import RouteSpec
from warmfleet.settings import Settings
from warmfleet.v1 import (
    accounts_pb2, accounts_pb2_grpc, cluster_pb2_grpc, models_pb2_grpc, predictions_pb2 as P, predictions_pb2_grpc, types_pb2 as T,
)

ECHO = "warmfleet/echo"
NARROW = "test/echo-narrow"  # one prediction at a time: for queueing, cancel and backpressure
LLM = "warmfleet/tiny-llama"
SD = "warmfleet/tiny-sd"
SDXL = "warmfleet/tiny-sdxl"
ESRGAN = "warmfleet/tiny-esrgan"
AUTOSCALED = "test/echo-autoscaled"  # min 0, max 2, one prediction per instance, short delays


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    from runners.tiny_models import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_sd_paths(tmp_path_factory) -> dict[str, Path]:
    from runners.tiny_models import make_tiny_sd_bundle

    return make_tiny_sd_bundle(tmp_path_factory.mktemp("sd-models"))


@pytest.fixture(scope="session")
def tiny_sdxl_paths(tmp_path_factory) -> dict[str, Path]:
    """The tiny SDXL base ("sdxl"), its refiner, its ControlNet ("controlnet") and a LoRA ("lora")."""
    from runners.tiny_sdxl import make_tiny_sdxl_bundle

    return make_tiny_sdxl_bundle(tmp_path_factory.mktemp("sdxl-models"))


@pytest.fixture(scope="session")
def tiny_sd_lora_dir(tiny_sd_paths, tmp_path_factory) -> Path:
    """The SD model's LoRA adapter "tiny-style" (options.loras)."""
    from runners.tiny_loras import make_tiny_sd_lora

    return make_tiny_sd_lora(tmp_path_factory.mktemp("sd-loras") / "tiny-style", tiny_sd_paths["sd"], seed=1)


@pytest.fixture(scope="session")
def tiny_annotator_paths(tmp_path_factory) -> dict[str, Path]:
    """The SD model's annotators (options.annotators): tiny random weights, real architectures."""
    from runners.tiny_annotators import make_tiny_annotators

    return make_tiny_annotators(tmp_path_factory.mktemp("annotators"))


@pytest.fixture(scope="session")
def tiny_esrgan_dir(tmp_path_factory) -> Path:
    from runners.tiny_models import make_tiny_esrgan

    return make_tiny_esrgan(tmp_path_factory.mktemp("esrgan") / "tiny-esrgan")


@pytest.fixture(scope="session")
def models(tiny_llama_dir, tiny_sd_paths, tiny_sd_lora_dir, tiny_annotator_paths, tiny_esrgan_dir,
           tiny_sdxl_paths) -> list[RouteSpec]:
    controlnets = {kind: str(path) for kind, path in tiny_sd_paths.items() if kind != "sd"}
    return [
        RouteSpec(ECHO, "echo"),
        RouteSpec(NARROW, "echo", options={"max_concurrency": 1}),
        RouteSpec(LLM, "llm", weights=str(tiny_llama_dir), options={"max_batch_size": 16}),
        # Batches gather for up to 200 ms, so predictions sent together reliably share a call.
        RouteSpec(SD, "diffusion", weights=str(tiny_sd_paths["sd"]),
                  options={"controlnets": controlnets, "steps": 4, "max_batch_size": 4,
                           "max_batch_wait_ms": 200, "loras": {"tiny-style": str(tiny_sd_lora_dir)},
                           "annotators": {key: str(path) for key, path in tiny_annotator_paths.items()}}),
        RouteSpec(SDXL, "diffusion", weights=str(tiny_sdxl_paths["sdxl"]),
                  options={"refiner": str(tiny_sdxl_paths["refiner"]),
                           "controlnets": {"canny": str(tiny_sdxl_paths["controlnet"])}, "steps": 4,
                           "max_batch_size": 4, "max_batch_wait_ms": 200,
                           "loras": {"tiny-style": str(tiny_sdxl_paths["lora"])}}),
        RouteSpec(ESRGAN, "upscale", weights=str(tiny_esrgan_dir), options={"tile": 64}),
        RouteSpec(AUTOSCALED, "echo", options={"max_concurrency": 1}, min_instances=0, max_instances=2,
                  autoscaling={"target_ongoing_requests": 1, "upscale_delay_s": 0.3, "downscale_delay_s": 1.5,
                               "scale_to_zero_delay_s": 2.5}),
    ]


@pytest.fixture(scope="session")
def ray_session():
    # A Ray of its own ("local"): never join another cluster that runs on this machine.
    ray_adapter.connect("local", f"warmfleet-test-{uuid.uuid4().hex[:6]}", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
async def controller(ray_session, models, tmp_path_factory):
    client = ray_adapter.start_controller(models, detached=False, cache_dir=str(tmp_path_factory.mktemp("node")))
    await client.start()
    yield client
    await client.shutdown()


@dataclass
class Api:
    """Stubs on one channel, and the metadata that carries a token."""

    channel: grpc.aio.Channel
    token: str

    @property
    def md(self):
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def predictions(self):
        return predictions_pb2_grpc.PredictionsStub(self.channel)

    @property
    def models(self):
        return models_pb2_grpc.ModelsStub(self.channel)

    @property
    def cluster(self):
        return cluster_pb2_grpc.ClusterStub(self.channel)

    @property
    def accounts(self):
        return accounts_pb2_grpc.AccountsStub(self.channel)

    async def account_id(self) -> str:
        """The id of the account this Api's token belongs to (what its predictions record as owner)."""
        reply = await self.accounts.GetAccount(accounts_pb2.GetAccountRequest(), metadata=self.md)
        return reply.account.id

    def as_token(self, token: str) -> "Api":
        return Api(self.channel, token)

    async def create(self, model: str = ECHO, wait_s: float = 10.0, **echo) -> P.Prediction:
        return await self.predictions.CreatePrediction(create_request(model, wait_s, **echo), metadata=self.md)

    async def get(self, prediction_id: str) -> T.Prediction:
        return await self.predictions.GetPrediction(P.GetPredictionRequest(id=prediction_id), metadata=self.md)


def create_request(model: str = ECHO, wait_s: float = 0.0, **echo) -> P.CreatePredictionRequest:
    echo.setdefault("text", "hello")
    return P.CreatePredictionRequest(model=model, wait_s=wait_s, input=T.PredictionInput(echo=T.EchoInput(**echo)))


class RunningGateway:
    """A gateway in this process, with a channel to it; restartable on the same home."""

    def __init__(self, home: Path, controller, **settings) -> None:
        self.settings = Settings(home=home, grpc_port=0, **{"http_port": 0, **settings})
        self.controller = controller
        self.gateway: Gateway | None = None
        self.api: Api | None = None

    async def start(self) -> Api:
        self.gateway = Gateway(self.settings, self.controller)
        port = await self.gateway.start()
        channel = gateway_channel(f"127.0.0.1:{port}", self.settings)
        self.api = Api(channel, self.settings.admin_token_path.read_text().strip())
        return self.api

    async def stop(self) -> None:
        await self.api.channel.close()
        await self.gateway.stop(grace_s=1.0)


def gateway_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to a gateway as its clients reach it: over TLS when it serves TLS, verified with the
    settings' CA (else its certificate itself)."""
    if not settings.tls_cert_path:
        return grpc.aio.insecure_channel(target)
    roots = Path(settings.tls_ca_path or settings.tls_cert_path).read_bytes()
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots))


@pytest.fixture(scope="module")
async def running(controller, tmp_path_factory):
    gw = RunningGateway(tmp_path_factory.mktemp("home"), controller)
    await gw.start()
    yield gw
    await gw.stop()


@pytest.fixture
def api(running) -> Api:
    return running.api


async def user(api: Api, name: str, role: str = "user") -> Api:
    """An Api acting as a token of a new user account called ``name`` (``api`` is an admin's)."""
    await api.accounts.CreateAccount(accounts_pb2.CreateAccountRequest(name=name), metadata=api.md)
    request = accounts_pb2.CreateTokenRequest(account=name, name="default", role=role)
    return api.as_token((await api.accounts.CreateToken(request, metadata=api.md)).text)

"""TLS, with certificates issued in the test (``trustme``): a real gateway on 127.0.0.1 serving gRPC and
HTTPS with a CA-issued pair, reached by ``warmfleet.Client``, aiohttp and the official ``openai`` client,
each verifying against the test CA; plaintext clients and clients that do not trust the CA fail, saying
why; `up`'s health check over TLS; the pair `warmfleet tls self-signed` writes, served by a gateway and
by `warmfleet up` (with the data plane over TLS too), used by the CLI with no extra flag; and the data
plane over TLS, a router's channel pinned to its agent's own certificate, in process and through Ray."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from pathlib import Path

import aiohttp
import openai
import pytest
import ray
import trustme

from node.agent import NodeAgent
from node.data_server import DataServer
from scheduler import ray_adapter
from scheduler.data_channel import DataChannel
from scheduler.ports import NodeLost
from tests.integration.conftest import ECHO, LLM, RunningGateway
from tests.integration.test_crash import CONFIG, home_cli
from tests.unit.fakes import poll_until_ended
from warmfleet.cli import launch
from warmfleet.cli.commands import cli as cli_group
from warmfleet.client import Client, Endpoint, GatewayUnreachableError, TlsError, UnauthenticatedError
from warmfleet.domain import Finished, OutputChunk, RouteSpec, Status, Task
from warmfleet.settings import Settings
from warmfleet.tls import client_ssl_context, self_signed

pytestmark = pytest.mark.integration

ROUTER = "router-tls"
SECRET = "tls-s3cret"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, and a certificate it issued for this machine's names (its chain and key as files)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("pki")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(folder / "key.pem"))
    with open(folder / "cert.pem", "wb") as out:
        for blob in leaf.cert_chain_pems:
            out.write(blob.bytes())
    other = folder / "other-ca.pem"  # a CA that issued nothing the gateway serves
    trustme.CA().cert_pem.write_to_path(str(other))
    return {"ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
            "other_ca": other}


@pytest.fixture(scope="module")
async def tls_gw(controller, tmp_path_factory, pki):
    gw = RunningGateway(tmp_path_factory.mktemp("tls-home"), controller, tls_cert_path=str(pki["cert"]),
                        tls_key_path=str(pki["key"]), tls_ca_path=str(pki["ca"]))
    await gw.start()
    yield gw
    await gw.stop()


def python_client(gw: RunningGateway, url: str, **tls) -> Client:
    """``warmfleet.Client`` with the gateway's admin token, and settings of a home with no record."""
    return Client(url, gw.api.token, timeout_s=20, settings=Settings(home=gw.settings.home / "client"), **tls)


def https(gw: RunningGateway) -> str:
    return f"https://127.0.0.1:{gw.gateway.http_port}"


# gRPC


async def test_the_python_client_predicts_and_streams_over_tls(tls_gw, pki):
    text = f"over tls {uuid.uuid4().hex[:8]}"

    def run() -> tuple[str, list]:
        with python_client(tls_gw, f"grpcs://127.0.0.1:{tls_gw.gateway.port}",
                           root_certificates=str(pki["ca"])) as client:
            assert client.endpoint.tls
            streamed = list(client.stream(ECHO, {"text": "abcdef", "chunks": 3, "delay_ms": 60}))
            return client.run(ECHO, {"text": text}), streamed

    output, events = await asyncio.to_thread(run)
    assert output == text
    chunks = [e.data.value for e in events if e.kind == "output"]
    assert 2 <= len(chunks) <= 3 and "".join(chunks) == "abcdef"  # chunks that pile up may travel merged
    assert events[-1].kind == "completed" and events[-1].data.output == "abcdef"


async def test_the_token_is_checked_over_tls_as_over_plaintext(tls_gw, pki):
    def call() -> None:
        with Client(f"127.0.0.1:{tls_gw.gateway.port}", "wf_not-a-token", tls=True,
                    root_certificates=pki["ca"].read_bytes(), settings=Settings(home=tls_gw.settings.home)
                    ) as client:
            client.models.list()

    with pytest.raises(UnauthenticatedError, match="unknown token"):
        await asyncio.to_thread(call)


async def test_a_plaintext_client_at_the_tls_port_is_refused_and_told_why(tls_gw):
    def call() -> None:
        with python_client(tls_gw, f"127.0.0.1:{tls_gw.gateway.port}") as client:
            client.models.list()

    with pytest.raises(GatewayUnreachableError, match="if it serves TLS, connect with TLS"):
        await asyncio.to_thread(call)


@pytest.mark.parametrize("roots", ["other_ca", None], ids=["another-ca", "default-roots"])
async def test_a_client_that_does_not_trust_the_ca_fails_saying_so(tls_gw, pki, roots):
    def call() -> None:
        given = {"root_certificates": str(pki[roots])} if roots else {"tls": True}
        with python_client(tls_gw, f"127.0.0.1:{tls_gw.gateway.port}", **given) as client:
            client.models.list()

    with pytest.raises(TlsError) as caught:
        await asyncio.to_thread(call)
    message = str(caught.value)
    assert message.startswith(f"the TLS handshake with the gateway at 127.0.0.1:{tls_gw.gateway.port} failed")
    assert "is not one this client trusts" in message and "CERTIFICATE_VERIFY_FAILED" in message


async def test_ups_health_check_works_over_tls_and_says_why_an_untrusted_one_fails(tls_gw, pki):
    target = f"127.0.0.1:{tls_gw.gateway.port}"
    trusted = Endpoint(target, True, pki["ca"].read_bytes())
    assert await asyncio.to_thread(launch.health, trusted) == launch.SERVING
    assert await asyncio.to_thread(launch.health, target) is None  # plaintext: no answer
    with pytest.raises(launch.LaunchError, match="is not one this client trusts"):
        await asyncio.to_thread(launch.health, Endpoint(target, True, pki["other_ca"].read_bytes()))


# HTTPS


async def test_rest_over_https_with_aiohttp_verifying_the_ca(tls_gw, pki):
    headers = {"Authorization": f"Bearer {tls_gw.api.token}", "Prefer": "wait"}
    async with aiohttp.ClientSession(https(tls_gw)) as http:
        async with http.get("/healthz", ssl=client_ssl_context(str(pki["ca"]))) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "serving"
        async with http.post(f"/v1/models/{ECHO}/predictions", json={"input": {"text": "rest over tls"}},
                             headers=headers, ssl=client_ssl_context(str(pki["ca"]))) as resp:
            body = await resp.json()
    assert resp.status == 201 and body["status"] == "succeeded" and body["output"] == "rest over tls"
    # The links the gateway hands out are https ones, as the request came.
    assert body["urls"]["get"].startswith(f"{https(tls_gw)}/v1/predictions/{body['id']}")
    assert body["urls"]["stream"].startswith(f"{https(tls_gw)}/")
    assert tls_gw.gateway.webhooks.base_url == https(tls_gw)


async def test_plaintext_http_and_an_untrusted_https_client_are_refused(tls_gw, pki):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://127.0.0.1:{tls_gw.gateway.http_port}/healthz") as resp:
                await resp.read()
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="CERTIFICATE_VERIFY_FAILED"):
            async with http.get(f"{https(tls_gw)}/healthz", ssl=client_ssl_context(str(pki["other_ca"]))):
                pass


async def test_the_openai_client_completes_over_https(tls_gw, pki):
    client = openai.AsyncOpenAI(base_url=f"{https(tls_gw)}/v1", api_key=tls_gw.api.token, max_retries=0,
                                timeout=60, http_client=openai.DefaultAsyncHttpxClient(
                                    verify=client_ssl_context(str(pki["ca"]))))
    untrusted = openai.AsyncOpenAI(base_url=f"{https(tls_gw)}/v1", api_key=tls_gw.api.token, max_retries=0,
                                   timeout=20, http_client=openai.DefaultAsyncHttpxClient(
                                       verify=client_ssl_context(str(pki["other_ca"]))))
    try:
        reply = await client.completions.create(model=LLM, prompt="seven wise owls watch", temperature=0,
                                                max_tokens=8)
        with pytest.raises(openai.APIConnectionError):
            await untrusted.completions.create(model=LLM, prompt="x", max_tokens=1)
    finally:
        await client.close()
        await untrusted.close()
    assert reply.object == "text_completion" and reply.choices[0].text != ""
    assert reply.usage.completion_tokens == 8 or reply.choices[0].finish_reason == "stop"


# The self-signed first try


async def test_the_self_signed_pair_serves_a_gateway_its_clients_verify(controller, tmp_path):
    from click.testing import CliRunner

    written = CliRunner().invoke(cli_group, ["tls", "self-signed", "--out", str(tmp_path / "pair")])
    assert written.exit_code == 0, written.output
    cert, key = tmp_path / "pair" / "cert.pem", tmp_path / "pair" / "key.pem"
    gw = RunningGateway(tmp_path / "home", controller, tls_cert_path=str(cert), tls_key_path=str(key))
    await gw.start()
    try:
        def run() -> str:
            url = f"grpcs://localhost:{gw.gateway.port}"
            with python_client(gw, url, root_certificates=str(cert)) as client:
                return client.run(ECHO, {"text": "self-signed"})

        assert await asyncio.to_thread(run) == "self-signed"  # by name: the certificate lists localhost
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{https(gw)}/healthz", ssl=client_ssl_context(str(cert))) as resp:
                assert resp.status == 200
    finally:
        await gw.stop()


TLS_CONFIG = CONFIG.replace("[settings]\n", "[settings]\ndata_plane_tls = true\n", 1)


def test_up_with_the_self_signed_pair_serves_tls_and_the_cli_follows_with_no_flag(tmp_path):
    assert "data_plane_tls = true" in TLS_CONFIG
    cli = home_cli(tmp_path, TLS_CONFIG)
    home = tmp_path / "home"
    assert cli("tls", "self-signed").returncode == 0
    cert, key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    up = cli("up", "--tls-cert", str(cert), "--tls-key", str(key))
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        state = json.loads((home / "cluster.json").read_text())
        assert state["tls"] is True and state["tls_ca_path"] == str(cert)
        assert f"tls:         gRPC and HTTPS, verified with {cert}" in up.stdout
        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert "health:   serving" in status.stdout
        assert f"https://{state['http_target']}/metrics" in status.stdout
        said = cli("predict", "acme/echo", "-i", "text=through tls, both planes")
        assert said.returncode == 0 and said.stdout.strip() == "through tls, both planes", said.stderr
        top = cli("top", "--once")
        assert top.returncode == 0 and "metrics not available" not in top.stdout, top.stdout + top.stderr
        plain = cli("--url", state["grpc_target"], "models", "list")
        assert plain.returncode == 1 and "if it serves TLS, connect with TLS" in plain.stderr
        # The prediction went to its agent over TLS: the router's stream says how it opened.
        log = (home / "logs" / "gateway.log").read_text()
        opened = r"the data stream to node \S+ is open \(TLS, its certificate pinned\)"
        assert re.search(opened, log), log[-3000:]
        assert "is open (plaintext)" not in log
    finally:
        down = cli("down")
        assert down.returncode == 0, down.stdout + down.stderr


# The data plane over TLS


@pytest.fixture
async def tls_agent():
    """An agent with one echo instance, serving its data plane over TLS with a pair of its own."""
    agent = NodeAgent("node-tls")
    await agent.load_instance("echo-1", RouteSpec("acme/echo", "echo", options={"max_concurrency": 4}))
    pair = self_signed(["127.0.0.1"])
    server = DataServer(agent, SECRET, "127.0.0.1", pair)
    address = await server.start()
    yield address, pair.certificate_pem
    await server.stop()


async def test_a_prediction_travels_the_data_plane_over_tls_to_the_pinned_agent(tls_agent):
    address, certificate = tls_agent
    channel = DataChannel("node-tls", address, SECRET, ROUTER, certificate=certificate)
    try:
        await channel.submit(ROUTER, [Task("p-tls", "echo-1", {"text": "pinned", "chunks": 2})])
        events = await poll_until_ended(channel, ROUTER, {"p-tls"}, (Finished,), 10.0)
    finally:
        await channel.close()
    bodies = [e.body for e in events if e.prediction_id == "p-tls"]
    assert bodies[-1].status is Status.SUCCEEDED and bodies[-1].output.value == "pinned"
    assert "".join(b.value for b in bodies if isinstance(b, OutputChunk)) == "pinned"


@pytest.mark.parametrize("how", ["plaintext", "another-agents-certificate", "wrong-secret"])
async def test_a_router_without_the_agents_certificate_or_secret_gets_no_session(tls_agent, how):
    address, certificate = tls_agent
    pinned = {"plaintext": b"", "another-agents-certificate": self_signed(["127.0.0.1"]).certificate_pem,
              "wrong-secret": certificate}[how]
    channel = DataChannel("node-tls", address, "wrong" if how == "wrong-secret" else SECRET, ROUTER,
                          reconnect_tries=1, certificate=pinned)
    try:
        with pytest.raises(NodeLost) as caught:
            await channel.attach(ROUTER)
    finally:
        await channel.close()
    if how == "wrong-secret":  # TLS up, then today's check: the session is refused for good
        assert "UNAUTHENTICATED" in str(caught.value)
    else:
        assert "UNAVAILABLE" in str(caught.value)


async def test_an_agent_actor_with_data_plane_tls_hands_its_certificate_over_ray(ray_session, tmp_path):
    node = ray_adapter.alive_nodes()[0]
    agent_id = f"tls-{uuid.uuid4().hex[:6]}"
    # An agent of its own, as the provisioner starts one: the session's controller keeps its agents.
    actor = ray_adapter._start_agent(agent_id, node, str(tmp_path), data_plane_tls=True)
    try:
        address, secret, certificate = await actor.data_plane.remote()
        assert certificate.startswith(b"-----BEGIN CERTIFICATE-----")
        handle = ray_adapter.RayNodeHandle(actor, agent_id, address, secret, certificate)
        await handle.load_instance("echo-tls", RouteSpec("acme/echo-tls", "echo"))
        await handle.submit(ROUTER, [Task("p-ray-tls", "echo-tls", {"text": "over ray's handshake"})])
        events = await poll_until_ended(handle, ROUTER, {"p-ray-tls"}, (Finished,), 30.0)
        [finished] = [e.body for e in events if isinstance(e.body, Finished)]
        assert finished.status is Status.SUCCEEDED and finished.output.value == "over ray's handshake"
        # The agent serves TLS only: the same session in plaintext gets nowhere.
        plain = DataChannel(agent_id, address, secret, ROUTER + "-plain", reconnect_tries=1)
        with pytest.raises(NodeLost, match="UNAVAILABLE"):
            await plain.attach(ROUTER + "-plain")
        await plain.close()
        await handle.close()
    finally:
        ray.kill(actor, no_restart=True)


def test_client_ssl_context_verifies_names(pki):
    context = client_ssl_context(str(pki["ca"]))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname

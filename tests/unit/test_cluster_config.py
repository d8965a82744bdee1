"""The cluster config file: models and deployments from TOML, every mistake named by its place."""

from __future__ import annotations

import pytest

from warmfleet.cli.cluster_config import load_cluster_config
from warmfleet.domain import RouteSpec
from warmfleet.errors import InvalidInput

BUILTIN = [RouteSpec("warmfleet/echo", "echo")]

GOOD = """
[settings]
grpc_port = 0

[[models]]
name = "acme/chat"
runner = "llm"
weights = "/models/chat"
min_instances = 0
max_instances = 3
options = { dtype = "bfloat16", max_batch_size = 8 }

[[deployments]]
name = "acme/chat-prod"
model = "acme/chat"
min_instances = 1
max_instances = 4
hardware = "gpu-nvidia-h100-80gb"
autoscaling = { target_ongoing_requests = 4, downscale_delay_s = 120 }

[[deployments]]
name = "acme/echo-prod"
model = "warmfleet/echo"
"""


def write(tmp_path, text: str):
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_models_and_deployments_become_routes(tmp_path):
    routes = {r.name: r for r in load_cluster_config(write(tmp_path, GOOD), BUILTIN)}
    assert list(routes) == ["warmfleet/echo", "acme/chat", "acme/chat-prod", "acme/echo-prod"]
    chat, prod = routes["acme/chat"], routes["acme/chat-prod"]
    assert (chat.runner, chat.weights, chat.options, chat.min_instances, chat.max_instances) == (
        "llm", "/models/chat", {"dtype": "bfloat16", "max_batch_size": 8}, 0, 3)
    assert (prod.model, prod.version, prod.release, prod.min_instances, prod.max_instances, prod.hardware) == (
        "acme/chat", chat.version, 1, 1, 4, "gpu-nvidia-h100-80gb")
    assert prod.autoscaling == {"target_ongoing_requests": 4.0, "downscale_delay_s": 120.0}
    assert routes["acme/echo-prod"].model == "warmfleet/echo" and routes["acme/echo-prod"].min_instances == 0


def test_builtin_models_can_be_left_out(tmp_path):
    text = '[cluster]\nbuiltin_models = false\n[[models]]\nname = "a/b"\nrunner = "echo"\n'
    assert [r.name for r in load_cluster_config(write(tmp_path, text), BUILTIN)] == ["a/b"]


@pytest.mark.parametrize("text, field", [
    ('[[models]]\nname = "a/b"\nrunner = "nope"\n', "models[0].runner"),
    ('[[models]]\nname = "a/b"\nrunner = "echo"\ncolour = "red"\n', "models[0].colour"),
    ('[[models]]\nrunner = "echo"\n', "models[0].name"),
    ('[[models]]\nname = "a/b"\nrunner = "echo"\nmin_instances = -1\n', "models[0].min_instances"),
    ('[[models]]\nname = "a/b"\nrunner = "echo"\nmin_instances = 3\nmax_instances = 2\n', "models[0].max_instances"),
    ('[[deployments]]\nname = "a/p"\nmodel = "a/missing"\n', "deployments[0].model"),
    ('[[deployments]]\nname = "a/p"\nmodel = "warmfleet/echo"\nautoscaling = { target_ongoing_requests = 0 }\n',
     "deployments[0].target_ongoing_requests"),
    ('[[deployments]]\nname = "a/p"\nmodel = "warmfleet/echo"\nautoscaling = { speed = 1 }\n',
     "deployments[0].autoscaling.speed"),
    ('[[models]]\nname = "warmfleet/echo"\nrunner = "echo"\n', "cluster_config"),
    ('[[models]]\nname = "a/b"\nrunner = "echo"\nretryable = "no"\n', "models[0].retryable"),
    ("[[models]\n", "cluster_config"),
])
def test_mistakes_are_refused_naming_their_place(tmp_path, text, field):
    with pytest.raises(InvalidInput) as err:
        load_cluster_config(write(tmp_path, text), BUILTIN)
    assert err.value.field == field


def test_a_model_may_be_marked_not_to_be_run_again_and_its_deployments_follow(tmp_path):
    text = ('[[models]]\nname = "acme/mailer"\nrunner = "echo"\nretryable = false\n'
            '[[models]]\nname = "acme/echo"\nrunner = "echo"\n'
            '[[deployments]]\nname = "acme/mailer-prod"\nmodel = "acme/mailer"\n')
    routes = {r.name: r for r in load_cluster_config(write(tmp_path, text), [])}
    assert not routes["acme/mailer"].retryable and not routes["acme/mailer-prod"].retryable
    assert routes["acme/echo"].retryable

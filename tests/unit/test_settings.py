"""Settings: flags > environment > config file > defaults, strict about names and values."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

import warmfleet.settings as settings_module
from warmfleet.errors import InvalidInput
from warmfleet.settings import Settings, load_settings


@pytest.fixture
def config(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "warmfleet.toml"
        path.write_text(text)
        return path

    return write


def test_defaults_when_nothing_is_given():
    s = load_settings(environ={})
    assert s.grpc_port == 50051 and s.http_port == 8000 and s.max_queue_per_model == 1024
    assert s.home == Path("~/.warmfleet").expanduser()
    assert s.store_path == s.home / "predictions.sqlite3"
    assert s.grpc_target == "127.0.0.1:50051"


def test_flags_beat_env_beat_file_beat_defaults(config):
    path = config('[settings]\ngrpc_port = 1001\nhttp_port = 2001\nmax_queue_per_model = 3001\n'
                  'ray_namespace = "from-file"\n')
    env = {"WARMFLEET_GRPC_PORT": "1002", "WARMFLEET_HTTP_PORT": "2002"}
    flags = {"grpc_port": 1003, "http_port": None}  # a flag left unset (None) does not count

    s = load_settings(flags, path, env)

    assert s.grpc_port == 1003  # flag over env and file
    assert s.http_port == 2002  # env over file
    assert s.max_queue_per_model == 3001  # file over default
    assert s.ray_namespace == "from-file"
    assert s.grpc_host == "127.0.0.1"  # default


def test_env_values_are_converted_to_each_setting_type(tmp_path):
    env = {"WARMFLEET_HOME": str(tmp_path / "wf"), "WARMFLEET_URL_FETCH_TIMEOUT_S": "2.5",
           "WARMFLEET_MAX_QUEUE_PER_MODEL": "7", "WARMFLEET_TOKEN": "wf_abc"}
    s = load_settings(environ=env)
    assert s.home == tmp_path / "wf" and isinstance(s.home, Path)
    assert s.url_fetch_timeout_s == 2.5 and s.max_queue_per_model == 7 and s.token == "wf_abc"


def test_a_home_with_a_tilde_is_expanded():
    s = load_settings(environ={"WARMFLEET_HOME": "~/elsewhere"})
    assert s.home == Path.home() / "elsewhere"


@pytest.mark.parametrize("source", ["flag", "file"])
def test_an_unknown_setting_is_invalid_input_naming_it(config, source):
    flags = {"grpc_prot": 1} if source == "flag" else None
    path = config("[settings]\ngrpc_prot = 1\n") if source == "file" else None
    with pytest.raises(InvalidInput) as err:
        load_settings(flags, path, environ={})
    assert err.value.field == "settings.grpc_prot"


@pytest.mark.parametrize("name, raw, source", [
    ("grpc_port", "fifty", "env"),
    ("url_fetch_timeout_s", "soon", "env"),
    ("max_queue_per_model", "[1, 2]", "file"),
    ("http_port", "12ab", "flag"),
])
def test_a_value_of_the_wrong_type_is_invalid_input_naming_the_setting(config, name, raw, source):
    env = {f"WARMFLEET_{name.upper()}": raw} if source == "env" else {}
    path = config(f"[settings]\n{name} = {raw}\n") if source == "file" else None
    flags = {name: raw} if source == "flag" else None
    with pytest.raises(InvalidInput) as err:
        load_settings(flags, path, env)
    assert err.value.field == f"settings.{name}"


@pytest.mark.parametrize("name, raw", [("max_queue_per_model", "2.5"), ("grpc_port", "true")])
def test_a_file_value_that_is_not_an_integer_is_refused_for_an_integer_setting(config, name, raw):
    with pytest.raises(InvalidInput) as err:
        load_settings(None, config(f"[settings]\n{name} = {raw}\n"), environ={})
    assert err.value.field == f"settings.{name}"


def test_the_environment_is_read_when_settings_are_built_not_at_import(monkeypatch):
    monkeypatch.setenv("WARMFLEET_GRPC_PORT", "6000")
    assert Settings().grpc_port == 50051  # the class defaults never look at the environment
    assert load_settings().grpc_port == 6000  # os.environ as it is at the call
    monkeypatch.setenv("WARMFLEET_GRPC_PORT", "6001")
    assert load_settings().grpc_port == 6001


def test_what_the_environment_held_at_import_does_not_stick():
    # A fresh interpreter, so the import really happens under the first environment.
    script = (
        "import os\n"
        "os.environ['WARMFLEET_GRPC_PORT'] = '7000'\n"
        "os.environ['WARMFLEET_HOME'] = '/imported/home'\n"
        "import warmfleet.settings as s\n"
        "del os.environ['WARMFLEET_GRPC_PORT'], os.environ['WARMFLEET_HOME']\n"
        "built = s.load_settings()\n"
        "print(built.grpc_port, built.home, s.Settings().grpc_port)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(settings_module.__file__).parents[1], env={**os.environ, "PYTHONPATH": "."})
    port, home, default_port = out.stdout.split()
    assert (int(port), int(default_port)) == (50051, 50051)
    assert home != "/imported/home"


def test_settings_are_frozen():
    s = load_settings(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.grpc_port = 1  # type: ignore[misc]

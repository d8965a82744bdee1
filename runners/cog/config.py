"""``cog.yaml``, read as Cog documents it (``docs/yaml.md``), and checked against what a warmfleet node can
do without building a container image.

A refusal names the field (``cog.yaml: build.python_version``) and the rule it broke, so a bad push is
answered before anything is stored or started.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmfleet.errors import InvalidInput

CONFIG_FILE = "cog.yaml"
_TOP_KEYS = {"build", "predict", "train", "concurrency", "image", "environment", "weights", "tests"}
_BUILD_KEYS = {"gpu", "python_version", "python_packages", "python_requirements", "system_packages", "run",
               "cuda", "cudnn", "cog_runtime", "sdk_version", "pre_install"}
MAX_CONCURRENCY = 1024


class _Loader(yaml.SafeLoader):
    """YAML as Cog's CLI reads cog.yaml: an unquoted ``3.10`` stays the text "3.10" (YAML 1.1 would make it
    the float 3.1, another Python)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader, floats as text


@dataclass(frozen=True)
class CogConfig:
    """What a version needs from its node: the predictor, its Python and packages, GPU, concurrency."""

    predict: str  # "predict.py:Predictor"
    python_version: str = ""  # "3.11" or "3.11.7"; "" means the node's own
    python_packages: tuple[str, ...] = ()  # pip requirement lines, python_requirements' included
    gpu: bool = False
    max_concurrency: int = 1
    environment: dict[str, str] = field(default_factory=dict)

    @property
    def requirements_digest(self) -> str:
        """Names the environment these packages are installed into; "" when there are none."""
        if not self.python_packages:
            return ""
        return hashlib.sha256("\n".join(self.python_packages).encode()).hexdigest()[:24]


def _field(name: str, rule: str) -> InvalidInput:
    return InvalidInput(f"cog.yaml: {name}", rule)


def read_config(root: Path) -> CogConfig:
    """Parse and check ``root/cog.yaml``. Raises ``InvalidInput`` naming the field."""
    path = root / CONFIG_FILE
    if not path.is_file():
        raise InvalidInput("cog.yaml", f"not found in the model directory; a Cog model has a {CONFIG_FILE} "
                                       "with `predict: \"predict.py:Predictor\"`")
    try:
        doc = _load(path) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InvalidInput("cog.yaml", f"is not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("cog.yaml", "must be a mapping of keys (build, predict, concurrency, ...)")
    _only_known("", doc, _TOP_KEYS)
    build = doc.get("build") or {}
    if not isinstance(build, dict):
        raise _field("build", "must be a mapping")
    _only_known("build.", build, _BUILD_KEYS)
    return CogConfig(
        predict=_predict_ref(root, doc.get("predict")),
        python_version=_python_version(build.get("python_version")),
        python_packages=_packages(root, build),
        gpu=_bool("build.gpu", build.get("gpu", False)),
        max_concurrency=_concurrency(doc.get("concurrency")),
        environment=_environment(doc.get("environment")),
    )


def _only_known(prefix: str, doc: dict[str, Any], known: set[str]) -> None:
    for key in doc:
        if key not in known:
            raise _field(f"{prefix}{key}", f"is not a cog.yaml key; known: {', '.join(sorted(known))}")


def _predict_ref(root: Path, value: Any) -> str:
    if not value:
        raise _field("predict", "is required: the predictor, as \"predict.py:Predictor\"")
    if not isinstance(value, str) or value.count(":") != 1:
        raise _field("predict", f"must be \"FILE.py:NAME\", got {value!r}")
    file, name = value.split(":")
    if not file.endswith(".py") or not name.isidentifier():
        raise _field("predict", f"must be \"FILE.py:NAME\" with NAME a Python identifier, got {value!r}")
    target = (root / file).resolve()
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        raise _field("predict", f"names {file}, which is not a file in the model directory")
    return value


def _python_version(value: Any) -> str:
    if value is None:
        return ""
    text = str(value)
    parts = text.split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts):
        raise _field("build.python_version", f"must be like \"3.11\" or \"3.11.7\", got {value!r}")
    return text


def _packages(root: Path, build: dict[str, Any]) -> tuple[str, ...]:
    listed = build.get("python_packages") or []
    if not isinstance(listed, list) or not all(isinstance(p, str) and p.strip() for p in listed):
        raise _field("build.python_packages", "must be a list of pip requirements (\"pillow==10.4.0\")")
    lines = [p.strip() for p in listed]
    req = build.get("python_requirements")
    if req:
        path = (root / str(req)).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            raise _field("build.python_requirements",
                         f"names {req}, which is not a file in the model directory")
        lines += [ln.strip() for ln in path.read_text().splitlines()
                  if ln.strip() and not ln.strip().startswith("#")]
    return tuple(lines)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _field(name, f"must be true or false, got {value!r}")
    return value


def _concurrency(value: Any) -> int:
    if value is None:
        return 1
    if not isinstance(value, dict) or set(value) - {"max", "default_target"}:
        raise _field("concurrency", "must be a mapping with `max` (and optionally `default_target`)")
    maximum = value.get("max", 1)
    if not isinstance(maximum, int) or isinstance(maximum, bool) or not 1 <= maximum <= MAX_CONCURRENCY:
        raise _field("concurrency.max", f"must be an integer from 1 to {MAX_CONCURRENCY}, got {maximum!r}")
    return maximum


def _environment(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, list):
        raise _field("environment", "must be a list of \"NAME=value\" strings")
    env = {}
    for i, item in enumerate(value):
        name, sep, text = str(item).partition("=")
        if not sep or not name.isidentifier():
            raise _field(f"environment[{i}]", f"must be \"NAME=value\", got {item!r}")
        env[name] = text
    return env


def check_runnable(root: Path) -> CogConfig:
    """``read_config``, then refuse what this node cannot run without a container image: another Python
    than its own, and build steps (``system_packages`` not all installed here, ``run``)."""
    config = read_config(root)
    here = platform.python_version()
    wanted = config.python_version
    if wanted and not (here == wanted or here.startswith(wanted + ".")):
        raise _field("build.python_version", f"asks for Python {wanted}; warmfleet nodes run Python {here} "
                                             "(set it to \"" + ".".join(here.split(".")[:2]) + "\")")
    doc = _load(root / CONFIG_FILE) or {}
    build = doc.get("build") or {}
    if build.get("run"):
        raise _field("build.run", "needs a container image build, which warmfleet does not do; install what "
                                  "it installs on the nodes, or as python_packages")
    missing = [p for p in build.get("system_packages") or [] if not system_package_installed(str(p))]
    if missing:
        raise _field("build.system_packages", f"{', '.join(missing)} not installed on this node; warmfleet "
                                              "builds no container image: install them on every node first")
    return config


def system_package_installed(name: str) -> bool:
    """Whether a Debian package is installed here (dpkg's status), the version pin ignored."""
    package = name.split("=", 1)[0].strip()
    if shutil.which("dpkg-query") is None:
        return False
    done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True,
                          check=False)
    return done.returncode == 0 and "install ok installed" in done.stdout

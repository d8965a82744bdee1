"""The cluster config file: what `warmfleet up` serves, in one TOML file an operator keeps in version
control. The same file may carry the process settings (its ``[settings]`` table, see ``settings.py``).

    [cluster]
    builtin_models = true            # also serve the built-in tiny models (default true)

    [[models]]
    name = "acme/sd15"
    runner = "diffusion"
    weights = "/models/sd15"
    min_instances = 0
    max_instances = 2
    options = { dtype = "float16", max_batch_size = 4 }
    retryable = true                 # re-run once when its node or the gateway dies mid-run (default)

    [[deployments]]
    name = "acme/sd-prod"
    model = "acme/sd15"              # a model above, or a built-in one
    min_instances = 1
    max_instances = 4
    hardware = "gpu-nvidia-h100-80gb"
    autoscaling = { target_ongoing_requests = 2, downscale_delay_s = 300 }

Every mistake is refused before anything starts, naming its place (``models[0].runner``).
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

from warmfleet.domain import RouteSpec
from warmfleet.errors import InvalidInput

MODEL_KEYS = {"name", "runner", "weights", "options", "description", "min_instances", "max_instances",
              "autoscaling", "hardware", "retryable"}
DEPLOYMENT_KEYS = {"name", "model", "version", "min_instances", "max_instances", "autoscaling", "hardware"}
AUTOSCALING_KEYS = {"target_ongoing_requests", "upscale_delay_s", "downscale_delay_s", "scale_to_zero_delay_s"}


def load_cluster_config(path: str | Path, builtin: list[RouteSpec]) -> list[RouteSpec]:
    """The routes the file asks for (with the built-in models unless it says not to), in order."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InvalidInput("cluster_config", f"{path}: {err}") from err
    cluster = _table(doc.get("cluster", {}), "cluster", {"builtin_models"})
    routes = list(builtin) if cluster.get("builtin_models", True) else []
    for i, raw in enumerate(_list(doc, "models")):
        routes.append(_model(_table(raw, f"models[{i}]", MODEL_KEYS), f"models[{i}]"))
    by_name = {r.name: r for r in routes}
    for i, raw in enumerate(_list(doc, "deployments")):
        where = f"deployments[{i}]"
        dep = _table(raw, where, DEPLOYMENT_KEYS)
        base = by_name.get(_str(dep, "model", where, required=True))
        if base is None:
            raise InvalidInput(f"{where}.model", f"no model {dep['model']!r} in this file or built in")
        if dep.get("version") and dep["version"] != base.version:
            raise InvalidInput(f"{where}.version", f"{dep['model']} is served at version {base.version} here")
        routes.append(replace(base, name=_str(dep, "name", where, required=True), model=base.name, release=1,
                              **_sizing(dep, where, default_min=0)))
    names = [r.name for r in routes]
    for name in names:
        if names.count(name) > 1:
            raise InvalidInput("cluster_config", f"{name!r} is defined more than once")
    return routes


def _model(raw: dict[str, Any], where: str) -> RouteSpec:
    from runners.registry import RUNNERS

    runner = _str(raw, "runner", where, required=True)
    if runner not in RUNNERS:
        raise InvalidInput(f"{where}.runner", f"unknown runner {runner!r}; known: {', '.join(sorted(RUNNERS))}")
    options = raw.get("options", {})
    if not isinstance(options, dict):
        raise InvalidInput(f"{where}.options", "must be a table")
    retryable = raw.get("retryable", True)
    if not isinstance(retryable, bool):
        raise InvalidInput(f"{where}.retryable", f"must be true or false, not {retryable!r}")
    return RouteSpec(name=_str(raw, "name", where, required=True), runner=runner,
                     weights=_str(raw, "weights", where), options=options, retryable=retryable,
                     description=_str(raw, "description", where), **_sizing(raw, where, default_min=1))


def _sizing(raw: dict[str, Any], where: str, default_min: int) -> dict[str, Any]:
    out: dict[str, Any] = {"min_instances": _count(raw, "min_instances", where, default_min)}
    if "max_instances" in raw:
        out["max_instances"] = _count(raw, "max_instances", where, 1)
    autoscaling = _table(raw.get("autoscaling", {}), f"{where}.autoscaling", AUTOSCALING_KEYS)
    for key, value in autoscaling.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidInput(f"{where}.autoscaling.{key}", f"must be a number, not {value!r}")
    out["autoscaling"] = {k: float(v) for k, v in autoscaling.items()}
    out["hardware"] = _str(raw, "hardware", where)
    try:
        from scheduler.autoscaling import AutoscalingConfig

        AutoscalingConfig(min_instances=out["min_instances"],
                          max_instances=out.get("max_instances", max(1, out["min_instances"])),
                          **out["autoscaling"])
    except ValueError as err:
        raise InvalidInput(f"{where}.{str(err).split(':')[0]}", str(err)) from None
    return out


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise InvalidInput(key, "must be an array of tables ([[" + key + "]])")
    return value


def _table(raw: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput(where, "must be a table")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise InvalidInput(f"{where}.{unknown[0]}", f"is not a known key; known: {', '.join(sorted(keys))}")
    return raw


def _str(raw: dict[str, Any], key: str, where: str, required: bool = False) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise InvalidInput(f"{where}.{key}", "is required" if required and not value else "must be a string")
    return value


def _count(raw: dict[str, Any], key: str, where: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where}.{key}", f"must be a whole number >= 0, not {value!r}")
    return value

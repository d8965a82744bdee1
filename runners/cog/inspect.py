"""``python -m runners.cog.inspect BUNDLE_DIR PREDICT_REF``: a Cog model's OpenAPI document, from Cog's own
inspector, in a process of its own (the predictor's module is imported, and may import anything).

``PREDICT_REF`` is cog.yaml's ``predict``, ``predict.py:Predictor`` or ``src/predict.py:Predictor``. The
module is imported by its dotted path from the bundle's root (``src.predict``), with the bundle first on
``sys.path`` and as the working directory, as it will run. One JSON line goes to stdout: ``{"openapi": ...,
"async": ...}`` (whether ``run``/``predict`` is a coroutine) with exit status 0, or ``{"error": "<one line>",
"traceback": "..."}`` with exit status 1. Anything else written to stdout (the predictor's prints, a native library's) goes to stderr instead.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import traceback
import warnings
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from cog._inspector import _selected_predict_method, create_predictor

from runners.cog.schema import openapi_schema
from warmfleet.errors import InvalidInput

USAGE = "usage: python -m runners.cog.inspect BUNDLE_DIR PREDICT_REF"
_REF_FIELD = "cog.yaml: predict"


def inspect_bundle(bundle_dir: Path, predict_ref: str) -> dict[str, Any]:
    """The OpenAPI document of the predictor ``predict_ref`` names in ``bundle_dir``. Imports the module,
    puts the bundle first on ``sys.path`` and changes into it: call it only in a process of its own."""
    root = bundle_dir.resolve()
    file, name = _split_ref(predict_ref)
    path = _predictor_file(root, file)
    module_name = ".".join(path.relative_to(root).with_suffix("").parts)
    sys.path.insert(0, str(root))
    os.chdir(root)
    module = _import(module_name, path)
    _check_defines(module, name, file)
    return openapi_schema(create_predictor(module_name, name))


def runs_async(bundle_dir: Path, predict_ref: str) -> bool:
    """Whether the predictor's ``run``/``predict`` is a coroutine (or async generator) function: coglet
    runs more than one prediction at a time (``concurrency.max``) only for those. After ``inspect_bundle``."""
    file, name = _split_ref(predict_ref)
    root = bundle_dir.resolve()
    module = sys.modules[".".join(_predictor_file(root, file).relative_to(root).with_suffix("").parts)]
    target = getattr(module, name)
    if inspect.isclass(target):  # the method Cog itself would call
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # predict() over run(): said at push already
            _, target = _selected_predict_method(target, f"{module.__name__}.{name}")
    return inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)


def _split_ref(predict_ref: str) -> tuple[str, str]:
    file, sep, name = predict_ref.partition(":")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        raise InvalidInput(_REF_FIELD, f'must be "FILE.py:NAME" with NAME a Python identifier, '
                                       f'got {predict_ref!r}')
    return file, name


def _predictor_file(root: Path, file: str) -> Path:
    path = (root / file).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise InvalidInput(_REF_FIELD, f"names {file}, which is not a file in {root}")
    return path


def _import(module_name: str, path: Path) -> ModuleType:
    top = module_name.partition(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        # A name this process already imported (cog, json, runners...) would resolve to that module, not the
        # bundle's file: say so instead of inspecting the wrong thing.
        where = getattr(loaded, "__file__", None) or "the standard library"
        raise InvalidInput(_REF_FIELD, f"{module_name} would import as {top!r}, a module already loaded "
                                       f"from {where}; rename the file or its folder")
    module = importlib.import_module(module_name)
    found = getattr(module, "__file__", None)
    if found is None or Path(found).resolve() != path:
        raise InvalidInput(_REF_FIELD, f"importing {module_name} loaded {found}, not {path}")
    return module


def _check_defines(module: ModuleType, name: str, file: str) -> None:
    """Cog's inspector reports a missing name as "module may have import errors"; the module has just been
    imported without one, so name what it does define instead."""
    if hasattr(module, name):
        return
    defined = sorted(
        attr for attr, value in vars(module).items()
        if (inspect.isclass(value) or inspect.isfunction(value)) and value.__module__ == module.__name__
    )
    listing = ", ".join(defined) if defined else "no classes or functions"
    raise InvalidInput(_REF_FIELD, f"{file} defines no class or function named {name!r} "
                                   f"(it defines: {listing})")


def _summary(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _claim_stdout() -> IO[str]:
    """The real stdout, for this process's one JSON line; fd 1 and ``sys.stdout`` become stderr, so prints
    from the predictor's import, Python's or a C library's, cannot corrupt the line."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def main(argv: list[str], out: IO[str]) -> int:
    """Inspect, write one JSON line to ``out``; the exit status."""
    try:
        if len(argv) != 2:
            raise InvalidInput("argv", USAGE)
        doc = inspect_bundle(Path(argv[0]), argv[1])
        line = json.dumps({"openapi": doc, "async": runs_async(Path(argv[0]), argv[1])}, allow_nan=False)
        status = 0
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any failure, the predictor's too, is the answer
        # SystemExit included: a predictor module may call sys.exit() while it is imported.
        line = json.dumps({"error": _summary(err), "traceback": traceback.format_exc()})
        status = 1
    out.write(line + "\n")
    out.flush()
    return status


if __name__ == "__main__":
    code = main(sys.argv[1:], _claim_stdout())
    sys.stderr.flush()
    # A predictor's import may have started threads that would keep the process alive; its answer is written.
    os._exit(code)

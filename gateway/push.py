"""Pushing a Cog model: a bundle in, a new immutable version out.

The bundle is written to the cluster's bundle store as it arrives (hashed on the way, never held in
memory whole), unpacked in a scratch folder, and read as Cog reads it: ``cog.yaml`` checked against what a
node can run, the packages installed (once per machine), the predictor inspected by the ``cog`` package in
a subprocess (``runners.cog.inspect``; the user's code never runs in the gateway). The OpenAPI document
it yields is the version's schema, enforced here and by coglet. Then the bundle goes to the cluster's
object store and the version to the controller (``RouteService.push_version``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable

from gateway.catalog import CatalogEntry, ModelCatalog
from gateway.deployments import PushResult, RouteService, check_name
from warmfleet.bundle import BundleWriter, extract_bundle
from runners.cog.config import CogConfig, check_runnable
from runners.cog.env import InstallFailed, ensure_environment, python_path
from runners.cog.runner import FAMILY
from warmfleet.domain import RouteSpec, NodeInfo
from warmfleet.errors import FailedPrecondition, InvalidInput, PermissionDenied

if TYPE_CHECKING:
    from gateway.auth import Principal

INSPECT_TIMEOUT_S = 300.0
MAX_BUNDLE_BYTES = 256 << 30


@dataclass(frozen=True)
class PushHeader:
    model: str
    description: str = ""
    digest: str = ""
    size_bytes: int = 0


@dataclass(frozen=True)
class PushedVersion:
    """A push as its caller is answered: the model as it is now, the version pushed, and what changed."""

    model: CatalogEntry
    version: CatalogEntry
    created_model: bool
    new_version: bool


class PushService:
    def __init__(self, routes: RouteService, bundles_dir: Path, envs_dir: Path,
                 publish: Callable[[str, Path], Awaitable[None]],
                 nodes: Callable[[], Awaitable[list[NodeInfo]]], *, catalog: ModelCatalog) -> None:
        """``publish`` hands a stored bundle to the cluster (the agents fetch it from there); ``nodes``
        lists the cluster's nodes (a GPU model is refused where there is no GPU); ``catalog`` is where
        the pushed version is found afterwards."""
        self._routes = routes
        self._catalog = catalog
        self._bundles = bundles_dir
        self._envs = envs_dir
        self._publish = publish
        self._nodes = nodes

    async def push_as(self, principal: Principal, header: PushHeader, chunks: AsyncIterator[bytes]
                      ) -> PushedVersion:
        """``push`` by the caller (to a new model or one of theirs), answered with the catalog's entries."""
        check_name("model", header.model)
        namespace = header.model.partition("/")[0]
        if not principal.may_write(namespace):
            raise PermissionDenied(f"model: {header.model} is not under a namespace of yours; push under "
                                   f"{' or '.join(sorted(principal.namespaces))}")
        result = await self.push(namespace, principal.is_admin, header, chunks)
        return PushedVersion(self._catalog.by_name(result.spec.name),
                             self._catalog.version_of(result.spec.name, result.version.version),
                             result.created_model, result.new_version)

    async def push(self, owner: str, is_admin: bool, header: PushHeader, chunks: AsyncIterator[bytes]
                   ) -> PushResult:
        check_name("model", header.model)
        self._routes.check_may_push(header.model, owner, is_admin)
        digest, archive, existed = await self._receive(header, chunks)
        try:
            config, openapi = await self._read(archive)
        except BaseException:
            if not existed:  # a refused push leaves nothing behind
                archive.unlink(missing_ok=True)
            raise
        await self._publish(digest, archive)
        spec = RouteSpec(
            name=header.model, runner=FAMILY, description=header.description, min_instances=0,
            options=_options(digest, archive.stat().st_size, config, openapi),
            version_id=digest, created_at=time.time(), owner=owner, visibility="private",
            hardware="gpu" if config.gpu else "",
        )
        return await self._routes.push_version(spec)

    async def _read(self, archive: Path) -> tuple[CogConfig, dict[str, Any]]:
        """Unpack the bundle in a scratch folder and read it as Cog does: its config, then its schema."""
        scratch = Path(tempfile.mkdtemp(prefix="warmfleet-push-"))
        try:
            bundle_dir = scratch / "bundle"
            try:
                await asyncio.to_thread(extract_bundle, archive, bundle_dir)
            except (tarfile.TarError, OSError) as err:
                raise InvalidInput("bundle", f"is not a bundle as `warmfleet push` makes it (a tar): "
                                             f"{err}") from None
            config = check_runnable(bundle_dir)
            await self._check_hardware(config)
            return config, await self._inspect(config, bundle_dir)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    async def _receive(self, header: PushHeader, chunks: AsyncIterator[bytes]) -> tuple[str, Path, bool]:
        """The bundle stored under its digest: the digest, its path, and whether it was there before."""
        writer = BundleWriter(self._bundles, MAX_BUNDLE_BYTES)
        try:
            async for chunk in chunks:
                writer.write(chunk)
        except ValueError as err:
            writer.abort()
            raise InvalidInput("chunk", str(err)) from None
        except BaseException:
            writer.abort()
            raise
        if header.size_bytes and writer.size != header.size_bytes:
            writer.abort()
            raise InvalidInput("header.size_bytes", f"says {header.size_bytes} bytes; {writer.size} arrived")
        digest, path = writer.commit()
        refusal = None
        if header.digest and header.digest != digest:
            refusal = InvalidInput("header.digest",
                                   f"says {header.digest}; the bytes that arrived hash to {digest}")
        elif writer.size == 0:
            refusal = InvalidInput("chunk", "no bundle bytes arrived after the header")
        if refusal is not None:
            if not writer.existed:  # a refused push leaves nothing behind
                path.unlink(missing_ok=True)
            raise refusal
        return digest, path, writer.existed

    async def _check_hardware(self, config: CogConfig) -> None:
        if not config.gpu:
            return
        hardware = sorted({n.hardware for n in await self._nodes()})
        if not any(h.startswith("gpu") for h in hardware):
            raise FailedPrecondition(f"cog.yaml: build.gpu is true, and this cluster has no GPU node (its "
                                     f"hardware: {', '.join(hardware) or 'none'}); push it to a cluster with a "
                                     "GPU, or set build.gpu: false")

    async def _inspect(self, config: CogConfig, bundle_dir: Path) -> dict[str, Any]:
        """Cog's own reading of the predictor, in a subprocess with the model's packages."""
        try:
            env_dir = await asyncio.to_thread(ensure_environment, config, self._envs, bundle_dir)
        except InstallFailed as err:
            raise InvalidInput("cog.yaml: build.python_packages", str(err)) from None
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runners.cog.inspect", str(bundle_dir), config.predict,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **config.environment, "PYTHONPATH": _inspect_path(bundle_dir, env_dir)},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), INSPECT_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            raise InvalidInput("predict",
                               f"importing the predictor took over {INSPECT_TIMEOUT_S:g} s") from None
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            doc = json.loads(lines[-1]) if lines else {}
        except ValueError:
            doc = {}
        if proc.returncode == 0 and "openapi" in doc:
            if config.max_concurrency > 1 and not doc.get("async"):
                raise InvalidInput("cog.yaml: concurrency.max", f"is {config.max_concurrency}, and coglet runs "
                                   "several predictions at once only for an async predictor: make "
                                   f"{config.predict}'s predict (or run) `async def`, or set concurrency.max: 1")
            return doc["openapi"]
        detail = doc.get("traceback") or err.decode(errors="replace")[-4000:]
        raise InvalidInput("predict", f"{config.predict}: {doc.get('error', 'the predictor could not be read')}"
                                      f"\n{detail}".rstrip())


def _inspect_path(bundle_dir: Path, env_dir: Path | None) -> str:
    """The model's code and packages, then warmfleet's own source (for ``runners.cog.inspect``)."""
    here = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([python_path(bundle_dir, env_dir), here])


def _options(digest: str, size: int, config: CogConfig, openapi: dict[str, Any]) -> dict[str, Any]:
    return {
        "bundle": digest, "bundle_size_bytes": size, "predict": config.predict,
        "max_concurrency": config.max_concurrency, "gpu": config.gpu,
        "python_packages": list(config.python_packages), "openapi_schema": openapi,
        "cog_version": metadata.version("cog"),
        # Booked for placement until the instance reports what it really uses.
        "memory_bytes": max(256 << 20, size * 2),
    }

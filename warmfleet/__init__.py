"""warmfleet: a gRPC inference cluster that keeps models warm on GPUs, coordinated by Ray.

``from warmfleet import Client`` is the Python client (see ``warmfleet.client``). Importing this
package stays light: the client, and grpc with it, load on first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from warmfleet.client import Client, PredictionError, WarmfleetClientError

__all__ = ["Client", "PredictionError", "WarmfleetClientError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("warmfleet.client"), name)
    raise AttributeError(f"module 'warmfleet' has no attribute {name!r}")

"""The REST translation of warmfleet.v1: the same services as JSON over HTTP, in Replicate's shapes
(and OpenAI's, for LLMs), served by the gateway's aiohttp application beside gRPC.

One translation layer, not a second implementation, and a sibling of the gRPC edge (``gateway.grpc``),
never a client of it: a route turns its JSON into the arguments of one call of a core service
(``gateway.predictions``, ``catalog``, ``deployments``, ``push``, ``files``: the very objects the gRPC
servicers call), makes that call, and turns the domain objects it returns into JSON (``shapes``).
Authentication, the error table, the access rules and the domain logic are the core's.

- ``context``: ``RestContext``, the core services and parts routes reach, stored on the app (``REST``);
- ``middleware``: reads ``Authorization: Bearer <token>`` (or ``Token <token>``, as Replicate's older
  clients send) into the same ``current_principal`` the gRPC interceptor sets; answers every error as
  RFC 7807 problem details from ``warmfleet.errors.STATUS_TABLE`` (429 with ``Retry-After``).
- Each module (``predictions``, ``catalog``, ``stream``, ``files``, ``openai``...) has
  ``register(app)``, called by ``app.add_rest_routes``.
"""

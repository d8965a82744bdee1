"""The REST translation of warmfleet.v1: the same services as JSON over HTTP, in Replicate's shapes
(and OpenAI's, for LLMs), served by the gateway's aiohttp application beside gRPC.

One translation layer, not a second implementation: a route turns its JSON into the request message of
one gRPC method, calls the in-process servicer (the very object gRPC calls, ``gateway.grpc``), and turns
the reply message into JSON. The SSE stream and the Files API call the core services directly
(``PredictionService.follow``, ``gateway.files.FileStore``), with no protobuf message between.
Authentication, the error table and the domain logic are the core's.

- ``context``: ``RestContext``, the servicers and parts routes reach, stored on the app (``REST``);
- ``middleware``: reads ``Authorization: Bearer <token>`` (or ``Token <token>``, as Replicate's older
  clients send) into the same ``current_principal`` the gRPC interceptor sets; answers every error as
  RFC 7807 problem details from ``warmfleet.errors.STATUS_TABLE`` (429 with ``Retry-After``).
- Each module (``predictions``, ``catalog``, ``stream``, ``files``, ``openai``...) has
  ``register(app)``, called by ``app.add_rest_routes``.
"""

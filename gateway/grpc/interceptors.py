"""The gateway's one interceptor: authenticates the caller and maps errors to gRPC statuses.

Errors come from the single table in ``warmfleet.errors``; anything outside the hierarchy becomes
INTERNAL with a generic message, and its traceback goes to the log.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import grpc

from gateway.accounts import Accounts
from gateway.auth import current_principal
from warmfleet.errors import LimitExceeded, WarmfleetError, status_for

log = logging.getLogger(__name__)

# Standard services every gRPC tool expects to reach without credentials.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


# The most a status message may take, in UTF-8 bytes. It travels as a percent-encoded trailer (up to 3
# characters a byte), and a client refuses trailers over 16 KiB: a message quoting a long input (a
# 20,000-character id) reached the client as RESOURCE_EXHAUSTED instead of its own status. A longer one
# keeps its start and its end (a traceback's last lines say what failed).
MAX_MESSAGE_BYTES = 4000


def error_status(err: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client sees for ``err``."""
    code_name, _ = status_for(err)
    if isinstance(err, WarmfleetError):
        return grpc.StatusCode[code_name], _bounded(str(err))
    return grpc.StatusCode.INTERNAL, "internal error; the gateway log has the details"


def _bounded(message: str) -> str:
    data = message.encode("utf-8", "replace")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    keep = (MAX_MESSAGE_BYTES - 100) // 2
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[-keep:].decode("utf-8", "ignore")
    return f"{head} ... ({len(data) - 2 * keep} bytes left out) ... {tail}"


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._wrapped: dict[str, Any] = {}  # method -> wrapped handler, built once per method

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        wrapped = self._wrapped.get(details.method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, details.method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        elif handler.unary_stream is not None:
            wrapped = grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, details.method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        elif handler.stream_unary is not None:  # a push: the request is a stream, the answer one message
            wrapped = grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, details.method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        else:  # no method of ours streams both ways: refuse what this interceptor cannot authenticate
            raise NotImplementedError(f"{details.method}: bidirectional streams are not served")
        self._wrapped[details.method] = wrapped
        return wrapped

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        auth = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        current_principal.set(self._accounts.authenticate(auth))

    def _unary(self, inner: Callable, method: str) -> Callable:
        async def behavior(request, context):
            try:
                self._authenticate(context)
                return await inner(request, context)
            except Exception as err:
                await _abort(context, err, method)

        return behavior

    def _stream(self, inner: Callable, method: str) -> Callable:
        async def behavior(request, context):
            try:
                self._authenticate(context)
                async for item in inner(request, context):
                    yield item
            except Exception as err:
                await _abort(context, err, method)

        return behavior


async def _abort(context: grpc.aio.ServicerContext, err: Exception, method: str) -> None:
    code, message = error_status(err)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=err)
    # A limit says when to come back, as HTTP's Retry-After does (the same name, in seconds).
    retry = (("retry-after", str(err.retry_after_s)),) if isinstance(err, LimitExceeded) else ()
    await context.abort(code, message, trailing_metadata=retry)

"""A bare grpc.aio server of the warmfleet.v1 Predictions service that answers echo at once.

No auth, no store, no router, no Ray: ``CreatePrediction`` builds the succeeded Prediction in the
handler. It is the floor any gateway can reach on this machine, and the baseline of ``bench.echo``.

    python -m bench.baseline_server --port 0      # prints the bound port on the first line of stdout
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid

import grpc

from warmfleet.v1 import predictions_pb2_grpc, types_pb2


class EchoPredictions(predictions_pb2_grpc.PredictionsServicer):
    """Answers every CreatePrediction with a succeeded prediction whose output is the echo text."""

    async def CreatePrediction(self, request, context) -> types_pb2.Prediction:
        prediction = types_pb2.Prediction(
            id=uuid.uuid4().hex, model=request.model, status=types_pb2.STATUS_SUCCEEDED, owner="baseline")
        prediction.input.CopyFrom(request.input)
        prediction.output.value.string_value = request.input.echo.text
        return prediction


async def start(host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the server on ``host:port`` (0 picks a free port); returns it and the bound port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    predictions_pb2_grpc.add_PredictionsServicer_to_server(EchoPredictions(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


async def serve(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, after printing the bound port."""
    server, bound = await start(host, port)
    print(bound, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()

"""A client made of nothing but the .proto files and grpcio: it compiles the protos itself, discovers the
services by reflection, checks health and makes a prediction. It must not import warmfleet.

Usage: python proto_only_client.py PROTO_DIR TARGET TOKEN OUT_DIR
"""

import importlib
import pathlib
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def main(proto_dir: str, target: str, token: str, out_dir: str) -> None:
    protos = sorted(str(p.relative_to(proto_dir)) for p in pathlib.Path(proto_dir).rglob("*.proto"))
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", *protos])
    assert rc == 0, "protoc failed"
    for package in ("warmfleet", "warmfleet/v1"):  # regular packages, found before any installed copy
        (pathlib.Path(out_dir) / package / "__init__.py").touch()
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("warmfleet.v1.predictions_pb2")
    pb_grpc = importlib.import_module("warmfleet.v1.predictions_pb2_grpc")
    types = importlib.import_module("warmfleet.v1.types_pb2")
    assert pathlib.Path(pb.__file__).is_relative_to(out_dir), "must use the freshly compiled stubs"

    with grpc.insecure_channel(target) as channel:
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(iter(reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))))
        services = sorted(s.name for s in reply.list_services_response.service)
        print("services:", ",".join(services))

        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="warmfleet.v1.Predictions"))
        print("health:", health_pb2.HealthCheckResponse.ServingStatus.Name(health.status))

        stub = pb_grpc.PredictionsStub(channel)
        request = pb.CreatePredictionRequest(
            model="warmfleet/echo", wait_s=10, input=types.PredictionInput(echo=types.EchoInput(text="from protos")))
        pred = stub.CreatePrediction(request, metadata=(("authorization", f"Bearer {token}"),))
        print("status:", types.Status.Name(pred.status))
        print("output:", pred.output.value.string_value)
    ours = [m for name, m in sys.modules.items() if name.split(".")[0] in ("warmfleet", "gateway", "scheduler")]
    foreign = [m.__name__ for m in ours if not str(getattr(m, "__file__", "") or "").startswith(out_dir)]
    print("project modules imported:", ",".join(foreign) or "none")


if __name__ == "__main__":
    main(*sys.argv[1:])

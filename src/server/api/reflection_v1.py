"""Server reflection as `grpc.reflection.v1` as well as `v1alpha`.

grpcio-reflection ships only v1alpha. The v1 protocol is the same file with another
package name (same messages, same field numbers), so its descriptor is derived from
v1alpha's and the v1alpha servicer answers both; current clients (grpcurl, Postman)
ask for v1 first."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha
from grpc_reflection.v1alpha import reflection_pb2_grpc as alpha_grpc

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_ALPHA, _V1 = "grpc.reflection.v1alpha", "grpc.reflection.v1"


def _register_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindServiceByName(V1_SERVICE_NAME)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name = "grpc/reflection/v1/reflection.proto"
    proto.package = _V1
    for message in proto.message_type:
        for field in message.field:
            if field.type_name.startswith(f".{_ALPHA}."):
                field.type_name = "." + _V1 + field.type_name[len(_ALPHA) + 1 :]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_ALPHA, _V1)
            method.output_type = method.output_type.replace(_ALPHA, _V1)
    pool.Add(proto)


def enable(service_names: list[str], server: Any) -> None:
    """Registers reflection (v1alpha and v1) listing `service_names` and itself."""
    pool = descriptor_pool.Default()
    _register_v1_descriptor(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    alpha_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha.ServerReflectionRequest.FromString,
        response_serializer=alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, {"ServerReflectionInfo": handler})

"""Every id in every RPC goes through one rule, and no error echoes more than a short,
sanitised prefix of what the client sent. Walks the services' descriptors, so an RPC
added later is covered without touching this file."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_status import rpc_status

from assigncore.v1 import (
    admin_service_pb2,
    console_service_pb2,
    intake_service_pb2,
    supervisor_service_pb2,
)

from .server_harness import ADMIN, INTAKE, auth, live_server, rep_token

HOSTILE = "\u202e<b>" + "x" * 10_000  # right-to-left override, markup, and far too long
SERVICES = [
    (console_service_pb2, "RepConsoleService", rep_token("ann")),
    (intake_service_pb2, "IntakeService", INTAKE),
    (admin_service_pb2, "AdminService", ADMIN),
    (supervisor_service_pb2, "SupervisorService", ADMIN),
]


def fill_ids(msg, value: str) -> int:
    """Sets every id field (`id`, `*_id`, `*_ids`) of `msg` and its sub-messages."""
    filled = 0
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        is_id = name == "id" or name.endswith("_id") or name.endswith("_ids")
        if field.type == FieldDescriptor.TYPE_STRING and is_id:
            if field.is_repeated:
                getattr(msg, name).append(value)
            else:
                setattr(msg, name, value)
            filled += 1
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and not field.is_repeated
            and field.message_type.full_name.startswith("assigncore.")
        ):
            filled += fill_ids(getattr(msg, name), value)
    if "update_mask" in msg.DESCRIPTOR.fields_by_name:
        msg.update_mask.paths.append(value)
        filled += 1
    return filled


def unary_methods():
    for module, service, token in SERVICES:
        for method in module.DESCRIPTOR.services_by_name[service].methods:
            if method.server_streaming or method.client_streaming:
                continue
            yield module, service, token, method


@pytest.fixture
async def live():
    server = await live_server()
    yield server
    await server.close()


async def test_every_id_field_of_every_rpc_is_checked_and_never_echoed_at_length(live):
    checked = []
    for module, service, token, method in unary_methods():
        request_cls = getattr(module, method.input_type.name)
        response_cls = getattr(module, method.output_type.name)
        request = request_cls()
        if not fill_ids(request, HOSTILE):
            continue
        call = live.channel.unary_unary(
            f"/assigncore.v1.{service}/{method.name}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request, metadata=auth(token))
        exc = err.value
        where = f"{service}.{method.name}"
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, exc.code(), exc.details())
        texts = [exc.details() or ""]
        status = rpc_status.from_call(exc)
        assert status is not None, where
        for detail in status.details:
            texts.append(detail.value.decode("utf-8", "replace"))
        for text in texts:
            assert "x" * 41 not in text, where
            assert "\u202e" not in text and "<b>" not in text, where
        assert len(exc.details()) <= 500, where
        checked.append(where)
    assert len(checked) >= 25, checked  # the id-bearing RPCs of all three services


async def test_an_unknown_but_well_formed_id_is_not_found_with_a_short_echo(live):
    for method, request in (
        ("GetIssueType", admin_service_pb2.GetIssueTypeRequest(issue_type_id="nope")),
        ("GetSupportButton", admin_service_pb2.GetSupportButtonRequest(support_button_id="no")),
        ("GetHelpLink", admin_service_pb2.GetHelpLinkRequest(help_link_id="no")),
        ("RevokeAccessToken", admin_service_pb2.RevokeAccessTokenRequest(token_id="tok_0")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(live.admin, method)(request, metadata=auth(ADMIN))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, method

"""Console messages as bytes on the wire, built once per change.

An event that several reps get differs between them only in its sequence number (and
every event of one change has the same time), so its body is serialized once and each
rep's copy is that body behind a few bytes of its own: a protobuf message's encoding is
the concatenation of its fields' encodings. The console streams write these bytes as
they are (their handlers are registered without a response serializer)."""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from assigncore.v1 import console_service_pb2 as cpb


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tag(message: type[Message], field: str) -> bytes:
    """The key of a length-delimited field (wire type 2)."""
    return varint(message.DESCRIPTOR.fields_by_name[field].number << 3 | 2)


_SEQUENCE = varint(cpb.SubscribeResponse.DESCRIPTOR.fields_by_name["sequence"].number << 3)
_TIME = _tag(cpb.SubscribeResponse, "time")
_CONNECT_EVENT = _tag(cpb.ConnectResponse, "event")
_CONNECT_RESULT = _tag(cpb.ConnectResponse, "result")


def body(**event: Any) -> bytes:
    """The encoding of a SubscribeResponse that holds only this event (one oneof field):
    what every rep's copy of it shares. Deterministic, so a replay gives equal bytes."""
    return cpb.SubscribeResponse(**event).SerializeToString(deterministic=True)


def stamp(time: Message) -> bytes:
    """The encoded `time` field of a SubscribeResponse."""
    raw = time.SerializeToString()
    return _TIME + varint(len(raw)) + raw


def numbered(sequence: int, stamp: bytes, body: bytes) -> bytes:
    """One rep's SubscribeResponse: its sequence number, the time, the shared body."""
    return _SEQUENCE + varint(sequence) + stamp + body


def connect_event(subscribe_response: bytes) -> bytes:
    """A ConnectResponse carrying an encoded SubscribeResponse."""
    return _CONNECT_EVENT + varint(len(subscribe_response)) + subscribe_response


def connect_result(result: cpb.ActionResult) -> bytes:
    raw = result.SerializeToString()
    return _CONNECT_RESULT + varint(len(raw)) + raw

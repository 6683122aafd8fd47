"""``tykworker call``: call a running server the way the gateway would, print the answer.

A grpcurl for Tyk plugins: builds the ``coprocess.Object`` a stock gateway sends for one
request (``objects.gateway_object``, shaped as ``CoProcessor.BuildObject`` in the gateway's
``gateway/coprocess.go`` builds it), sends it to
``/coprocess.Dispatcher/Dispatch`` (or a ``coprocess.Event`` to ``DispatchEvent`` with
``--event``) and prints the reply as JSON (protobuf's JSON mapping with the proto field
names; bytes fields are shown as text when they are UTF-8, base64 otherwise).

Runs in the CLI process only (it imports grpc; the supervisor never imports this module).
Exit status: 0 when the hook (or event handler) answered; 5 when tykworker answered on
its behalf (``X-Tykworker-Error`` in the reply Object, or the reason an ``EventReply``
carries, see ``wire/answers.py``: no such hook or handler, it raised, timeout...), which is
also named on stderr (the reply is printed all the same); 1 on a gRPC error or a reply that
does not decode; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.config import HOOK_TYPES, Settings, parse_address
from tykworker.errors import ConfigError, ExitCode
from tykworker.wire import answers
from tykworker.wire.answers import ANSWER_HEADER
from tykworker.wire.reasons import Reason

DISPATCH = "/coprocess.Dispatcher/Dispatch"
DISPATCH_EVENT = "/coprocess.Dispatcher/DispatchEvent"


def build_object(args: argparse.Namespace) -> object_pb2.Object:
    """The Object the gateway would send for these arguments. Raises ConfigError."""
    hook_type = HOOK_TYPES[args.hook_type]
    session = None
    if hook_type in (objects.POST_KEY_AUTH, objects.POST):
        session = objects.authenticated_session()  # as on a protected API
    return objects.gateway_object(
        hook_type,
        args.hook,
        headers=parse_pairs(args.header, ":", objects.canonical_header),
        url=args.url,
        method=args.method.upper(),
        body=_body(args),
        session=session,
        spec=parse_pairs(args.spec, "="),
    )


def build_event(args: argparse.Namespace) -> object_pb2.Event:
    """A ``coprocess.Event``: ``--event`` JSON with ``handler_name`` = HOOK and a spec."""
    try:
        payload = json.loads(args.event)
    except ValueError as exc:
        raise ConfigError(f"--event is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError("--event must be a JSON object")
    if "message" not in payload:
        payload = {"message": payload}  # just the message part was given
    payload.setdefault("handler_name", args.hook)
    spec = {"APIID": "api-1", "OrgID": "org-1", **parse_pairs(args.spec, "=")}
    payload.setdefault("spec", spec)
    return object_pb2.Event(payload=json.dumps(payload))


def parse_pairs(items: Sequence[str], sep: str, key: Any = str) -> dict[str, str]:
    """``["K:V", ...]`` -> ``{K: V}`` (value stripped of surrounding blanks)."""
    out = {}
    for item in items:
        name, found, value = item.partition(sep)
        if not found or not name.strip():
            raise ConfigError(f"expected NAME{sep}VALUE, got {item!r}")
        out[key(name.strip())] = value.strip()
    return out


def _body(args: argparse.Namespace) -> bytes:
    if args.body is not None:
        return str(args.body).encode()
    if args.body_file is None:
        return b""
    if str(args.body_file) == "-":
        return sys.stdin.buffer.read()
    try:
        return bytes(args.body_file.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read --body-file {args.body_file}: {exc.strerror}") from exc


def to_json(message: Message) -> dict[str, Any]:
    """Protobuf JSON mapping with field names as in the .proto; UTF-8 bytes as text."""
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _bytes_as_text(message, doc)
    return doc


def _bytes_as_text(message: Message, doc: dict[str, Any]) -> None:
    for field, value in message.ListFields():
        name = field.name
        if field.type == FieldDescriptor.TYPE_BYTES and not field.is_repeated:
            doc[name] = _text(value, doc[name])
        elif field.message_type is None:
            continue
        elif field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, item in value.items():
                    _bytes_as_text(item, doc[name][str(key)])
        elif field.is_repeated:
            for item, item_doc in zip(value, doc[name], strict=True):
                _bytes_as_text(item, item_doc)
        else:
            _bytes_as_text(value, doc[name])


def _text(raw: bytes, encoded: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return encoded  # base64, as the JSON mapping has it


def target(settings: Settings) -> str:
    """The gRPC target for the server's ``socket`` setting."""
    kind, address = parse_address(settings.socket)
    return f"unix:{address}" if kind == "unix" else address


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Make the call and print the answer; returns the exit code."""
    event = args.event is not None
    request = build_event(args) if event else build_object(args)
    limit = settings.max_message_bytes
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    with grpc.insecure_channel(target(settings), options=options) as channel:
        method = channel.unary_unary(DISPATCH_EVENT if event else DISPATCH)  # type: ignore[call-arg]
        try:
            reply = method(request.SerializeToString(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"tykworker call: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return ExitCode.ERROR
    return _print_reply(bytes(reply), event)


def _print_reply(reply: bytes, event: bool) -> int:
    if event:
        print(json.dumps({}))  # EventReply declares no field; the gateway ignores it
        return _answered_by_tykworker(answers.event_answer(reply))
    try:
        obj = object_pb2.Object.FromString(reply)
    except DecodeError as exc:
        print(f"tykworker call: the reply is not a coprocess.Object: {exc}", file=sys.stderr)
        print(base64.b64encode(reply).decode())
        return ExitCode.ERROR
    print(json.dumps(to_json(obj), indent=2, sort_keys=True))
    return _answered_by_tykworker(
        obj.request.return_overrides.headers.get(ANSWER_HEADER)
        or obj.response.headers.get(ANSWER_HEADER, "")
    )


def _answered_by_tykworker(code: str) -> int:
    """Name on stderr the reason tykworker answered for the hook (``code``, empty: the
    hook answered itself); the exit status."""
    if not code:
        return ExitCode.OK
    reason = next((r for r in Reason if r.code == code), None)
    why = f"{code} ({reason.message}; the server's log says more)" if reason else code
    print(f"tykworker call: answered by tykworker: {why}", file=sys.stderr)
    return ExitCode.ANSWERED

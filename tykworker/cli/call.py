"""``tykworker call``: call a running server the way the gateway would, print the answer.

A grpcurl for Tyk plugins: builds the ``coprocess.Object`` a stock gateway sends for one
request (``objects.gateway_object``, shaped as ``CoProcessor.BuildObject`` in the gateway's
``gateway/coprocess.go`` builds it), sends it to
``/coprocess.Dispatcher/Dispatch`` (or a ``coprocess.Event`` to ``DispatchEvent`` with
``--event``) and prints the reply as JSON (protobuf's JSON mapping with the proto field
names; bytes fields are shown as text when they are UTF-8, base64 otherwise).

Input shaping (``cli/callargs.py``): the request (headers, method, url, body), the spec and
``config_data``, the session (JSON) and its metadata for the hook types the gateway sends
one to, the upstream response of a Response hook (status, headers, body), or a whole
captured Object (``--object-file``) that the other options change. What the gateway never
sends to a hook type (a session to a Pre hook, a response to a Post hook) is refused.
Printing: a Response hook's ``multivalue_headers`` are shown as the gateway applies them
(synchronised with ``headers``), unless ``--raw``.

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
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker._proto import coprocess_session_state_pb2 as session_pb2
from tykworker.cli import objects
from tykworker.config import HOOK_TYPES, Settings, parse_address
from tykworker.errors import ConfigError, ExitCode
from tykworker.wire import answers
from tykworker.wire.answers import ANSWER_HEADER
from tykworker.wire.reasons import Reason

DISPATCH = "/coprocess.Dispatcher/Dispatch"
DISPATCH_EVENT = "/coprocess.Dispatcher/DispatchEvent"


def build_object(args: argparse.Namespace) -> object_pb2.Object:
    """The Object the gateway would send for these arguments (or the ``--object-file``
    Object changed by them). Raises ConfigError."""
    hook_type = HOOK_TYPES[args.hook_type] if args.hook_type else None
    changes: dict[str, Any] = {
        "headers": parse_pairs(args.header, ":", objects.canonical_header),
        "method": args.method.upper() if args.method else None,
        "url": args.url,
        "body": _body(args),
        "spec": parse_pairs(args.spec, "="),
        "config_data": _config_data(args),
        "session": _session(args),
        "metadata": parse_pairs(args.metadata, "="),
        "response": _response(args),
    }
    try:
        if args.object_file is not None:
            obj = _read_object(args.object_file)
            objects.override(obj, hook_type=hook_type, hook_name=args.hook, **changes)
        else:
            obj = _fresh_object(args.hook, hook_type, changes)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    _check_shape(obj.hook_type, changes["session"], changes["metadata"], changes["response"])
    return obj


def _fresh_object(
    hook: str | None, hook_type: int | None, changes: dict[str, Any]
) -> object_pb2.Object:
    """A new Object, with ``call``'s defaults: ``GET /``, a Pre hook, and for
    PostKeyAuth/Post hooks an authenticated test session unless one is given."""
    if not hook:
        raise ConfigError("HOOK is required (unless --object-file names a captured call)")
    hook_type = objects.PRE if hook_type is None else hook_type
    session = changes["session"]
    if session is None and hook_type in (objects.POST_KEY_AUTH, objects.POST):
        session = objects.authenticated_session()  # as on a protected API
    return objects.gateway_object(
        hook_type,
        hook,
        **{
            **changes,
            "url": changes["url"] or "/",
            "method": changes["method"] or "GET",
            "body": changes["body"] or b"",
            "session": session,
        },
    )


def _check_shape(
    hook_type: int,
    session: object,
    metadata: dict[str, str],
    response: object,
) -> None:
    """Refuse what the gateway never sends to this hook type."""
    name = _type_name(hook_type)
    if (session is not None or metadata) and hook_type not in objects.SESSION_HOOKS:
        raise ConfigError(
            f"--session/--metadata: the gateway sends no session to {name} hooks "
            "(only post_key_auth, post and response)"
        )
    if response is not None and hook_type != objects.RESPONSE:
        raise ConfigError(
            f"--status/--response-header/--response-body: only response hooks get the "
            f"upstream response, not {name} hooks"
        )


def _type_name(hook_type: int) -> str:
    for name, number in HOOK_TYPES.items():
        if number == hook_type:
            return name
    return str(hook_type)


def _read_file(path: Path, option: str) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {option} {path}: {exc.strerror}") from exc


def _read_object(path: Path) -> object_pb2.Object:
    try:
        return objects.object_from_bytes(_read_file(path, "--object-file"))
    except ValueError as exc:
        raise ConfigError(f"--object-file {path}: {exc}") from exc


def _session(args: argparse.Namespace) -> session_pb2.SessionState | None:
    if args.session is None and args.session_file is None:
        return None
    if args.session is not None:
        text: str | bytes = args.session
    else:
        text = _read_file(args.session_file, "--session-file")
    try:
        return objects.session_from_json(text)
    except ValueError as exc:
        raise ConfigError(f"--session: {exc}") from exc


def _config_data(args: argparse.Namespace) -> str | None:
    if args.config_data is None:
        return None
    try:
        json.loads(args.config_data)
    except ValueError as exc:
        raise ConfigError(f"--config-data is not JSON: {exc}") from exc
    return str(args.config_data)


def _response(args: argparse.Namespace) -> dict[str, Any] | None:
    given = (
        args.status is not None
        or args.response_header
        or args.response_body is not None
        or args.response_body_file is not None
    )
    if not given:
        return None
    headers: dict[str, list[str]] = {}
    for item in args.response_header:
        name, found, value = item.partition(":")
        if not found or not name.strip():
            raise ConfigError(f"expected NAME:VALUE, got {item!r}")
        headers.setdefault(objects.canonical_header(name.strip()), []).append(value.strip())
    if args.response_body_file is not None:
        body = _read_file(args.response_body_file, "--response-body-file")
    else:
        body = (args.response_body or "").encode()
    return {"status": 200 if args.status is None else args.status, "headers": headers, "body": body}


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
    if not args.hook:
        raise ConfigError("--event needs HOOK, the handler name")
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


def _body(args: argparse.Namespace) -> bytes | None:
    """The request body given (``None``: none given)."""
    if args.body is not None:
        return str(args.body).encode()
    if args.body_file is None:
        return None
    return _read_file(args.body_file, "--body-file")


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
    sent = request if isinstance(request, object_pb2.Object) else None
    return _print_reply(bytes(reply), event, sent, raw=args.raw)


def _print_reply(
    reply: bytes, event: bool, sent: object_pb2.Object | None = None, raw: bool = False
) -> int:
    """Print the reply as JSON. Unless ``raw``, a Response hook's ``multivalue_headers``
    are shown synchronised with its ``headers`` as the gateway applies them
    (``objects.sync_response_headers``): what the client would get. A request hook that
    edited ``request.headers`` (which the gateway ignores) gets a note on stderr."""
    if event:
        print(json.dumps({}))  # EventReply declares no field; the gateway ignores it
        return _answered_by_tykworker(answers.event_answer(reply))
    try:
        obj = object_pb2.Object.FromString(reply)
    except DecodeError as exc:
        print(f"tykworker call: the reply is not a coprocess.Object: {exc}", file=sys.stderr)
        print(base64.b64encode(reply).decode())
        return ExitCode.ERROR
    if sent is not None and not raw and obj.HasField("response"):
        objects.sync_response_headers(sent.response.headers, obj.response)
    print(json.dumps(to_json(obj), indent=2, sort_keys=True))
    if sent is not None and dict(obj.request.headers) != dict(sent.request.headers):
        print(
            "tykworker call: the hook changed request.headers, which the gateway ignores: "
            "request.add_header/delete_header (set_headers, delete_headers) change the request",
            file=sys.stderr,
        )
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

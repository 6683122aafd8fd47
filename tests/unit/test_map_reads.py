"""Which protobuf map reads insert a key (docs/plugins.md lists them), and that tykworker's
own helpers and reads never do: a hook that only reads leaves the reply as sent."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from google.protobuf.descriptor import Descriptor

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli.objects import AUTH, RESPONSE, authenticated_session, gateway_object, parse
from tykworker.config import Settings
from tykworker.worker.plugins import load_runtime

if TYPE_CHECKING:  # what the stubs type Message.DESCRIPTOR as, beside Descriptor
    from google._upb._message import Descriptor as UpbDescriptor

DOC = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text()


def map_paths(descriptor: Descriptor | UpbDescriptor, prefix: str = "") -> list[str]:
    """Every map field reachable from ``descriptor``, as ``a.b.c`` paths."""
    out = []
    for field in descriptor.fields:
        path = prefix + field.name
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            out.append(path)
        elif not field.is_repeated:
            out.extend(map_paths(field.message_type, path + "."))
    return out


def documented() -> list[str]:
    return re.findall(r"^  \| `([\w.]+)`(?: \([^)]*\))? \| ", DOC, re.M)


def resolve(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_doc_lists_every_map_of_the_object() -> None:
    assert sorted(documented()) == sorted(map_paths(object_pb2.Object.DESCRIPTOR))


@pytest.mark.parametrize("path", map_paths(object_pb2.Object.DESCRIPTOR))
def test_subscript_inserts_and_the_other_reads_do_not(path: str) -> None:
    obj = object_pb2.Object()
    m = resolve(obj, path)
    assert m.get("missing") is None and "missing" not in m and dict(m) == {} and len(m) == 0
    assert obj.ByteSize() == 0  # nothing of the above inserted anything
    m["missing"]  # the read under test
    assert "missing" in m and obj.ByteSize() > 0  # as the doc says: it inserts


HOOKS = """
from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def ReadOnly(request, session, metadata, spec):
    assert request.get_header("X-Missing") is None
    assert request.get_header("Authorization") == "secret-key"
    tyk.log("read " + str(tyk.get_data("missing-key")), "info")
    assert metadata.get("user") is None and "user" not in session.metadata
    assert spec.get("config_data") is None
    return request, session, metadata


@Hook
def ReadOnlyResponse(request, response, session, metadata, spec):
    assert response.headers.get("X-Missing") is None
    return response
"""


@pytest.mark.parametrize(
    ("hook", "hook_type"), [("ReadOnly", AUTH), ("ReadOnlyResponse", RESPONSE)]
)
def test_a_hook_that_reads_through_the_helpers_gets_the_object_back_unchanged(
    tmp_path: Path, hook: str, hook_type: int
) -> None:
    plugins = tmp_path / "middleware"
    plugins.mkdir()
    (plugins / "hooks.py").write_text(HOOKS)
    runtime = load_runtime(
        Settings(
            middleware=str(plugins),
            event_handlers=str(tmp_path / "none"),
            runtime_dir=str(tmp_path / "run"),
        )
    )
    try:
        sent = gateway_object(
            hook_type,
            hook,
            headers={"Authorization": "secret-key"},
            session=authenticated_session(),
        )
        sent.ClearField("spec")  # no APIID: tykworker's own read of it must not add one
        reply = parse(runtime.dispatch(sent.SerializeToString()))
    finally:
        runtime.close()
    assert (
        reply.request.return_overrides.response_code == sent.request.return_overrides.response_code
    )
    for path in map_paths(object_pb2.Object.DESCRIPTOR):
        assert dict(resolve(reply, path)) == dict(resolve(sent, path)), path

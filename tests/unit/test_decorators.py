"""Decorators: names, calling conventions, registration record, Tyk-compatible imports."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tykworker.worker import tyk as shims
from tykworker.worker.tyk.decorators import (
    CustomKeyCheck,
    Event,
    HandlerDecorator,
    Hook,
    Post,
    PostKeyAuth,
    Pre,
    Response,
    collecting,
)


def three(request: Any, session: Any, spec: Any) -> tuple[Any, Any]:
    return request, session


def four(request: Any, session: Any, metadata: Any, spec: Any) -> tuple[Any, Any, Any]:
    return request, session, metadata


def five(request: Any, response: Any, session: Any, metadata: Any, spec: Any) -> Any:
    return response


@pytest.mark.parametrize(("f", "count"), [(three, 3), (four, 4), (five, 5)])
def test_hook_arg_count_is_the_positional_parameter_count(f: Any, count: int) -> None:
    hook = Hook(f)
    assert (hook.name, hook.arg_count) == (f.__name__, count)
    assert hook.__name__ == f.__name__ and hook.__wrapped__ is f  # type: ignore[attr-defined]


def test_hook_accepts_any_arg_count_like_tyk() -> None:
    def two(a: Any, b: Any) -> None: ...

    assert Hook(two).arg_count == 2  # called as a plugin error, not at decoration time


def test_calling_a_handler_calls_the_function() -> None:
    assert Hook(three)("req", "sess", "spec") == ("req", "sess")
    assert Event(lambda event, spec: (event, spec))("e", "s") == ("e", "s")


@pytest.mark.parametrize(
    ("decorator", "f", "count"),
    [
        (Pre, three, 3),
        (Post, three, 3),
        (PostKeyAuth, three, 3),
        (CustomKeyCheck, four, 4),
        (Response, five, 5),
    ],
)
def test_typed_decorators_fix_the_convention(
    decorator: type[HandlerDecorator], f: Any, count: int
) -> None:
    assert decorator(f).arg_count == count


def test_typed_decorator_accepts_defaults_and_varargs() -> None:
    def with_default(request: Any, session: Any, spec: Any, extra: Any = None) -> None: ...

    def with_varargs(*args: Any) -> None: ...

    assert Pre(with_default).arg_count == 3
    assert CustomKeyCheck(with_varargs).arg_count == 4


@pytest.mark.parametrize(
    ("decorator", "f"), [(Pre, four), (CustomKeyCheck, three), (Response, four), (Post, five)]
)
def test_typed_decorator_rejects_a_function_of_the_wrong_shape(
    decorator: type[HandlerDecorator], f: Any
) -> None:
    with pytest.raises(TypeError, match=f"@{decorator.__name__} {f.__name__} must accept"):
        decorator(f)


def test_event_requires_two_arguments() -> None:
    with pytest.raises(TypeError, match="event, spec"):
        Event(lambda event: None)


def test_decorating_a_non_callable_fails() -> None:
    with pytest.raises(TypeError, match="must decorate a function"):
        Hook("not a function")  # type: ignore[arg-type]


def test_collecting_records_handlers_in_order_with_file_and_line() -> None:
    outside = Hook(three)
    with collecting() as found:
        first = Hook(three)
        with collecting() as inner:
            nested = Event(lambda event, spec: None)
        second = Pre(three)
    assert found == [first, second]
    assert inner == [nested]
    assert outside not in found
    assert first.filename == __file__
    assert first.lineno == three.__code__.co_firstlineno


def test_tyk_import_names_resolve_after_install() -> None:
    shims.install()
    shims.install()  # idempotent
    import gateway  # type: ignore[import-not-found]
    import tyk.decorators  # type: ignore[import-not-found]
    from tyk.request import TykCoProcessRequest  # type: ignore[import-not-found]
    from tyk.session import TykSession  # type: ignore[import-not-found]

    import tykworker.worker.tyk.decorators

    namespace: dict[str, Any] = {}
    exec("from tyk.decorators import *", namespace)
    assert {"Hook", "Pre", "Post", "PostKeyAuth", "CustomKeyCheck", "Response", "Event"} <= set(
        namespace
    )
    assert namespace["getfullargspec"] is not None
    assert tyk.decorators is tykworker.worker.tyk.decorators
    assert gateway.TykGateway is sys.modules["tyk.gateway"].TykGateway
    assert TykSession.DESCRIPTOR.full_name == "coprocess.SessionState"
    assert sys.modules["coprocess_object_pb2"].Object.DESCRIPTOR.full_name == "coprocess.Object"
    assert TykCoProcessRequest.__name__ == "TykCoProcessRequest"


def test_request_wrapper_helpers_edit_the_live_message() -> None:
    from tykworker._proto import coprocess_mini_request_object_pb2 as request_pb2
    from tykworker.worker.tyk.request import TykCoProcessRequest

    message = request_pb2.MiniRequestObject()
    message.headers["Authorization"] = "abc"
    request = TykCoProcessRequest(message)
    request.add_header("X-A", "1")
    request.delete_header("X-B")
    request.add_param("p", "2")
    request.delete_param("q")
    assert request.object is message
    assert (dict(message.set_headers), list(message.delete_headers)) == ({"X-A": "1"}, ["X-B"])
    assert (dict(message.add_params), list(message.delete_params)) == ({"p": "2"}, ["q"])
    assert request.get_header("Authorization") == "abc"
    assert request.get_header("authorization") is None  # exact, canonical names
    assert "authorization" not in message.headers  # the lookup inserted nothing

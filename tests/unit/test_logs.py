"""Log fields of the active call, JSON lines, and the slow-call sampler on a fake clock."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from tykworker import logs
from tykworker.logs import ActiveCall, ContextFilter, JsonFormatter, SlowCallLog


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    saved = dict(logs._process_fields)
    yield
    logs._process_fields.clear()
    logs._process_fields.update(saved)
    logs.end_call()


def _record(msg: str = "hello", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("tykworker.calls", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_filter_adds_process_and_call_fields_without_overriding_extra():
    logs.bind_process(worker_pid=42, generation=3)
    logs.begin_call(7, "MyHook")
    logs.active_call.api_id = "api-9"
    record = _record(hook="explicit")
    assert ContextFilter().filter(record)
    assert (record.worker_pid, record.generation, record.call_id) == (42, 3, 7)  # type: ignore[attr-defined]
    assert record.hook == "explicit"  # type: ignore[attr-defined]
    assert record.api_id == "api-9"  # type: ignore[attr-defined]
    logs.end_call()
    after = _record()
    ContextFilter().filter(after)
    assert not hasattr(after, "call_id") and after.worker_pid == 42  # type: ignore[attr-defined]


def test_json_lines_stay_one_line_with_the_fields():
    record = _record("line one\nline two", call_id=5, hook="H", api_id="a")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert (doc["msg"], doc["call_id"], doc["hook"], doc["api_id"]) == (
        "line one\nline two",
        5,
        "H",
        "a",
    )


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    handler = _Capture()
    logs.slow_log.addHandler(handler)
    try:
        yield handler.records
    finally:
        logs.slow_log.removeHandler(handler)


def test_slow_call_is_reported_once_past_the_threshold(captured: list[logging.LogRecord]):
    call = ActiveCall()
    watch = SlowCallLog(0.5, call)  # this thread's stack is sampled
    assert watch.check(100.0) == 0.5  # idle: sleep one threshold
    call.call_id, call.hook, call.api_id, call.started = 9, "Slow", "api-1", 100.0
    assert watch.check(100.2) == pytest.approx(0.3)  # sleep until its deadline
    assert captured == []
    assert watch.check(100.6) == 0.5
    (record,) = captured
    assert record.call_id == 9 and record.hook == "Slow" and record.api_id == "api-1"  # type: ignore[attr-defined]
    assert record.elapsed == pytest.approx(0.6)  # type: ignore[attr-defined]
    text = record.getMessage()
    assert text.startswith("slow call 9: hook 'Slow' (API api-1) running for 0.600s")
    assert "in test_slow_call_is_reported_once_past_the_threshold" in text
    assert watch.check(101.0) == 0.5 and len(captured) == 1  # not twice
    call.call_id, call.started = 10, 101.0  # the next call is watched again
    watch.check(102.0)
    assert [r.call_id for r in captured] == [9, 10]  # type: ignore[attr-defined]


def test_idle_sleep_has_a_floor():
    assert SlowCallLog(0.001, ActiveCall()).check(0.0) == pytest.approx(0.05)


def test_the_thread_samples_another_thread(captured: list[logging.LogRecord]):
    call = ActiveCall()
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        watch = SlowCallLog(0.01, call, thread_id=worker.ident)
        call.call_id, call.hook, call.started = 1, "Waiting", 0.0
        watch.start()
        pause = threading.Event()
        for _ in range(1000):  # condition wait, bounded at 10 s
            if captured:
                break
            pause.wait(0.01)
        watch.stop()
    finally:
        release.set()
        worker.join()
    assert captured, "no slow-call record"
    assert "in wait" in captured[0].getMessage()  # threading.Event.wait, the sampled thread

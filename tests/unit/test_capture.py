"""``serve --capture``'s writer (worker/capture.py): redaction as in the logs, a lossless
round trip, and the bounds shared by every worker writing into one folder."""

from __future__ import annotations

import json
from pathlib import Path

from tykworker._proto import coprocess_object_pb2 as object_pb2
from tykworker.cli import objects
from tykworker.config import Settings
from tykworker.worker.capture import Capture, file_name, redacted_json
from tykworker.worker.plugins import load_runtime

SECRETS = {
    "Authorization": "Bearer tok-secret-123",
    "Proxy-Authorization": "Basic cHJveHk6cGFzcw==",
    "Cookie": "session=cookie-value-9; theme=dark",
}


def sent(hook: str = "Echo", body: bytes = b"hello tok-secret-123") -> object_pb2.Object:
    obj = objects.gateway_object(
        objects.POST, hook, headers=SECRETS, url="/x?token=tok-secret-123", body=body
    )
    obj.session.metadata["seen"] = "cookie-value-9"
    return obj


def redacted(data: bytes) -> tuple[str, bytes]:
    """``redacted_json`` of an Object, which is never None."""
    out = redacted_json(data)
    assert out is not None
    return out


def test_secret_headers_and_their_copies_are_redacted_and_the_rest_round_trips():
    obj = sent()
    hook, content = redacted(obj.SerializeToString())
    text = content.decode()
    assert hook == "Echo"
    for secret in ("tok-secret-123", "cHJveHk6cGFzcw==", "cookie-value-9"):
        assert secret not in text
    back = objects.object_from_bytes(content)
    headers = back.request.headers
    assert {name: headers[name] for name in SECRETS} == dict.fromkeys(SECRETS, "[redacted]")
    assert back.request.url == "/x?token=[redacted]"
    assert back.session.metadata["seen"] == "[redacted]"
    expected = object_pb2.Object()
    expected.CopyFrom(obj)  # everything else exactly as sent
    expected.request.headers.update(dict.fromkeys(SECRETS, "[redacted]"))
    expected.request.url = expected.request.request_uri = "/x?token=[redacted]"
    expected.request.params["token"] = "[redacted]"
    expected.session.metadata["seen"] = "[redacted]"
    expected.request.raw_body = b"hello [redacted]"
    expected.request.body = "hello [redacted]"
    assert back == expected


def test_lower_case_secret_header_names_are_redacted_too():
    obj = objects.gateway_object(objects.PRE, "H", headers={"authorization": "abcd-efgh"})
    assert "abcd-efgh" not in redacted(obj.SerializeToString())[1].decode()


def test_not_an_object_is_not_captured():
    assert redacted_json(b"\xff\xff\xff") is None


def test_file_names_sort_by_time_and_carry_safe_hook_names():
    assert file_name("My/Hook name", 0.5, 42) == "19700101T000000.500000Z-42-My_Hook_name.json"
    assert file_name("", 1.0, 1).endswith("-1-_.json")
    assert file_name("a", 1.0, 1) < file_name("a", 2.0, 1)


def captures(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".json")


def test_file_count_bound_is_shared_by_workers(tmp_path: Path, caplog):
    folder = tmp_path / "captures"
    workers = [Capture(folder, every=1, max_files=3, max_bytes=1 << 20) for _ in range(2)]
    payload = sent().SerializeToString()
    results = [workers[i % 2].record(payload) for i in range(3)]
    assert results == [True, True, True] and len(captures(folder)) == 3
    assert workers[0].record(payload) is False  # full: stops for good
    assert workers[1].record(payload) is False
    assert len(captures(folder)) == 3
    assert "captures no more calls" in caplog.text
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert {oct(p.stat().st_mode & 0o777) for p in captures(folder)} == {"0o600"}


def test_byte_bound_skips_calls_that_do_not_fit(tmp_path: Path):
    folder = tmp_path / "captures"
    small = sent(body=b"s").SerializeToString()
    size = len(redacted(small)[1])
    capture = Capture(folder, every=1, max_files=100, max_bytes=2 * size + 10)
    big = sent(body=b"b" * 4096).SerializeToString()
    assert capture.record(big) is True and captures(folder) == []  # skipped, not stopped
    assert capture.record(small) and capture.record(small) and capture.record(small)
    assert len(captures(folder)) == 2
    assert sum(p.stat().st_size for p in captures(folder)) <= 2 * size + 10


def test_one_call_in_n(tmp_path: Path):
    capture = Capture(tmp_path, every=3, max_files=100, max_bytes=1 << 20)
    for _ in range(7):
        capture.record(sent().SerializeToString())
    assert len(captures(tmp_path)) == 2


def test_a_file_in_place_of_the_folder_stops_capture(tmp_path: Path, caplog):
    (tmp_path / "captures").write_text("not a folder")
    capture = Capture(tmp_path / "captures", every=1, max_files=5, max_bytes=1 << 20)
    assert capture.record(sent().SerializeToString()) is False
    assert "capture into" in caplog.text and "stopped" in caplog.text


def test_runtime_captures_only_when_asked(tmp_path: Path):
    fixtures = Path(__file__).parent.parent / "fixtures" / "plugins" / "conventions"
    off = load_runtime(Settings(middleware=str(fixtures), runtime_dir=str(tmp_path / "a")))
    try:
        assert off.capture is None
    finally:
        off.close()
    folder = tmp_path / "captures"
    on = load_runtime(
        Settings(
            middleware=str(fixtures),
            runtime_dir=str(tmp_path / "b"),
            capture=str(folder),
            capture_max_files=1,
        )
    )
    try:
        payload = objects.gateway_object(objects.PRE, "AddHeader").SerializeToString()
        first = on.dispatch(payload)
        assert on.dispatch(payload) == first  # capture never changes the answer
        assert on.capture is None  # the bound was reached: off for this worker
        (only,) = captures(folder)
        assert json.loads(only.read_text())["hook_name"] == "AddHeader"
    finally:
        on.close()

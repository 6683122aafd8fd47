"""The options of ``tykworker call`` (what to send, and how to print the reply).

Kept apart from ``cli/call.py`` because that module imports grpc and ``commands.py`` builds
every parser at start (``serve`` forks: grpcio must not be imported there). Defaults of
``None`` mean "not given" so that ``--object-file`` can tell what to change in a captured
Object; ``call.build_object`` applies the documented defaults.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tykworker.config import HOOK_TYPES


def add_call_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "hook",
        metavar="HOOK",
        nargs="?",
        default=None,
        help="hook (function) name; with --event, the handler (optional with --object-file)",
    )
    types = [name for name in HOOK_TYPES if name != "event"]
    cmd.add_argument(
        "--type", dest="hook_type", choices=types, default=None, help="hook type (default pre)"
    )
    request = cmd.add_argument_group("the request")
    request.add_argument(
        "--header", action="append", default=[], metavar="K:V", help="request header (repeat)"
    )
    body = request.add_mutually_exclusive_group()
    body.add_argument("--body", help="request body text")
    body.add_argument("--body-file", type=Path, metavar="F", help="request body file (- = stdin)")
    request.add_argument("--method", default=None, help="HTTP method (default GET)")
    request.add_argument("--url", default=None, help="request URL: path and query (default /)")
    request.add_argument(
        "--spec", action="append", default=[], metavar="K=V", help="API spec entry (repeat)"
    )
    request.add_argument(
        "--config-data", metavar="JSON", help='the API\'s config_data (spec["config_data"])'
    )
    session = request.add_mutually_exclusive_group()
    session.add_argument(
        "--session",
        metavar="JSON",
        help="the key's session (protobuf JSON of SessionState); post_key_auth, post and "
        "response hooks only (default: an authenticated test session for post_key_auth/post)",
    )
    session.add_argument("--session-file", type=Path, metavar="F", help="--session from a file")
    request.add_argument(
        "--metadata", action="append", default=[], metavar="K=V", help="session metadata (repeat)"
    )
    request.add_argument(
        "--object-file",
        type=Path,
        metavar="F",
        help="send this Object (a file written by serve --capture, JSON or binary); the "
        "options above change it",
    )
    upstream = cmd.add_argument_group("the upstream response (response hooks)")
    upstream.add_argument("--status", type=int, help="upstream status code (default 200)")
    upstream.add_argument(
        "--response-header",
        action="append",
        default=[],
        metavar="K:V",
        help="upstream response header (repeat; repeat a name for several values)",
    )
    response_body = upstream.add_mutually_exclusive_group()
    response_body.add_argument("--response-body", metavar="TEXT", help="upstream response body")
    response_body.add_argument(
        "--response-body-file", type=Path, metavar="F", help="upstream response body file"
    )
    cmd.add_argument("--event", metavar="JSON", help="send DispatchEvent with this payload")
    cmd.add_argument("--timeout", type=float, default=30.0, help="gRPC deadline, seconds")
    cmd.add_argument(
        "--raw",
        action="store_true",
        help="print the reply exactly as received (by default a response hook's "
        "multivalue_headers are shown as the gateway applies them: synchronised with headers)",
    )

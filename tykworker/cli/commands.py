"""Command line: ``tykworker serve|reload|status|call``. The only place that exits the process.

``serve`` loads settings (defaults < TOML < TYKWORKER_* < flags), configures logging and
runs the supervisor. SIGHUP re-runs the same loader with the same argv. The operator
commands find the server from the same settings (``--socket``, ``--config``, env):
``status`` and ``reload`` through its runtime directory (scoreboard, pid file), ``call``
over gRPC. Nothing here imports grpc at module level: ``serve`` forks, and grpcio does not
survive ``fork`` (only ``call`` imports it, in ``cli.call``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from tykworker import __version__, compiled, logs, tracing
from tykworker.config import Settings, add_setting_flags, load_settings, unknown_env
from tykworker.errors import ConfigError, ExitCode
from tykworker.wire.handoff import Children, FrontSpec, WorkerSpec

log = logging.getLogger("tykworker")

#: The settings ``reload`` and ``status`` use: where the server's runtime directory is.
FINDS_THE_SERVER = ("socket", "runtime_dir")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tykworker", description="Serve Tyk gateway Python plugins from a worker pool."
    )
    parser.add_argument(
        "--version", action="version", version=f"tykworker {__version__}, {compiled.describe()}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (supervisor, front and workers)")
    add_setting_flags(serve, defaults=True)
    for name, text in (
        ("reload", "rolling reload of a running server (SIGHUP)"),
        ("status", "show what every worker of a running server is doing"),
    ):
        cmd = sub.add_parser(name, help=text)
        add_setting_flags(cmd, FINDS_THE_SERVER)  # (the config is still validated whole)
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="machine-readable output")
        else:
            cmd.add_argument(
                "--wait",
                type=float,
                default=120.0,
                metavar="SECONDS",
                help="how long to wait for the new generation (default: 120); then exit 1",
            )
    call = sub.add_parser(
        "call", help="call a hook of a running server as the gateway would; print the reply"
    )
    call.add_argument("--socket", help="the server's gRPC address (as for serve)")
    call.add_argument("--config", metavar="FILE", help="TOML config file (for its socket)")
    _add_call_arguments(call)
    return parser


def _add_call_arguments(cmd: argparse.ArgumentParser) -> None:
    from tykworker.cli.callargs import add_call_arguments

    add_call_arguments(cmd)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(vars(args))


def _run_front(settings: Settings, spec: FrontSpec) -> int:
    from tykworker.front.core import run_front  # in the forked front only: it imports grpc

    return run_front(settings, spec)


def _run_worker(settings: Settings, spec: WorkerSpec) -> int:
    from tykworker.worker.loop import run_worker  # in the forked worker only

    return run_worker(settings, spec)


#: What the supervisor forks; the imports happen in each child, after ``fork``.
CHILDREN = Children(front=_run_front, worker=_run_worker)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(settings.log_level, settings.log_format)
    for warning in unknown_env(os.environ):
        log.warning("%s", warning)
    if tracing.check(settings.tracing, os.environ):  # the SDK starts in each child, after fork
        log.info("tracing on: spans %s", tracing.describe(os.environ))
    from tykworker.supervisor.process import serve

    return serve(settings, lambda: _settings(args), CHILDREN)


def _supervisor_pid(settings: Settings) -> int:
    pidfile = settings.resolved_runtime_dir() / "supervisor.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no running tykworker found for {settings.socket} ({pidfile})") from exc


def _verify_supervisor(settings: Settings, pid: int) -> None:
    """Refuse (ConfigError) unless ``pid`` is this server's supervisor
    (``status.supervisor_problem``)."""
    from tykworker.cli.status import supervisor_problem

    problem = supervisor_problem(settings, pid)
    if problem == "gone":
        raise ConfigError(f"pid {pid} from supervisor.pid is not a running tykworker: gone")
    if problem is not None:
        raise ConfigError(f"pid {pid} from supervisor.pid is {problem}: not signalled")


def cmd_reload(args: argparse.Namespace) -> int:
    """SIGHUP the supervisor, then wait until the new generation is ready or failed."""
    from tykworker.wire.scoreboard import Scoreboard

    settings = _settings(args)
    pid = _supervisor_pid(settings)
    _verify_supervisor(settings, pid)
    board = Scoreboard.open(settings.resolved_runtime_dir() / "scoreboard", writable=False)
    before = board.header()
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        now = board.header()
        if now.reloads != before.reloads:
            print(f"reloaded: generation {now.generation} is serving")
            return ExitCode.OK
        if now.reload_failures != before.reload_failures:
            print(f"reload failed: generation {now.generation} keeps serving (see the log)")
            return ExitCode.ERROR
        time.sleep(0.05)
    print(f"reload not finished after {args.wait:g}s")
    return ExitCode.ERROR


def cmd_status(args: argparse.Namespace) -> int:
    from tykworker.cli.status import render_status

    print(render_status(_settings(args), as_json=args.json))
    return ExitCode.OK


def cmd_call(args: argparse.Namespace) -> int:
    from tykworker.cli.call import run

    settings = load_settings({"socket": args.socket, "config": args.config})
    return run(settings, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"serve": cmd_serve, "reload": cmd_reload, "status": cmd_status, "call": cmd_call}
    if args.command != "serve":  # serve logs them (cmd_serve), in its log format
        for warning in unknown_env(os.environ):  # a misspelt TYKWORKER_* is ignored: say so
            print(f"tykworker: warning: {warning}", file=sys.stderr)
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        print(f"tykworker: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.ERROR
    except BrokenPipeError:
        # ``tykworker status | head``: the reader left. Exit quietly like other Unix tools
        # (status 128 + SIGPIPE), and keep Python from failing again on the final flush.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE

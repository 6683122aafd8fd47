"""The supervisor: forks the front and the workers, reaps, restarts, reloads, stops.

It never imports grpc (grpcio cannot survive ``fork`` once a gRPC object exists) and never
runs plugin code: both happen only in children. It binds the public Unix sockets the
native front and the raw socket serve and hands them to every front it forks, so that they
outlive a front. ``pool.Pool`` decides; this module acts
(fork, signal, reap, sd_notify, scoreboard header).

Loop: signal handlers only push the signal number on a queue; the loop
blocks in ``selectors`` on the signal wake-up socket and each child's channel
(channels.py: one per child, read and checked per sender), with a timeout
taken from ``Pool.next_wakeup``. No fixed polling.

Signals: HUP = rolling reload (re-reads config; an invalid one is logged and the old one
kept), TERM = graceful stop, INT/QUIT = fast stop, TTIN/TTOU = one worker more/less,
CHLD = reap.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import shutil
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import psutil

from tykworker.config import RESTART_ONLY, Settings, parse_address
from tykworker.errors import ConfigError, ExitCode
from tykworker.store import STORE_FILENAME, SQLiteStore
from tykworker.supervisor.channels import Channels, Sender, open_pair
from tykworker.supervisor.pool import (
    Exit,
    Log,
    Phase,
    Pool,
    PoolAction,
    ProcState,
    ReloadOutcome,
    SendSignal,
    SpawnFront,
    SpawnWorker,
)
from tykworker.supervisor.watch import Watcher, watched_folders
from tykworker.system import crashlog, kernel, proctitle, sockets, systemd
from tykworker.wire import control
from tykworker.wire.handoff import Children, FrontSpec, WorkerSpec
from tykworker.wire.scoreboard import Scoreboard, SlotState, SlotView

log = logging.getLogger("tykworker.supervisor")

_HANDLED = (
    signal.SIGHUP,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


class Supervisor:
    def __init__(
        self, settings: Settings, reload_settings: Callable[[], Settings], children: Children
    ) -> None:
        self.children = children
        self.settings = settings
        self.reload_settings = reload_settings
        self.runtime_dir = settings.resolved_runtime_dir()
        self.pool = Pool(target=settings.workers, graceful_timeout=settings.graceful_timeout)
        self.signals: deque[int] = deque()
        self.index_of: dict[int, int] = {}  # pid -> scoreboard slot index
        self.settings_of: dict[int, Settings] = {1: settings}  # generation -> settings
        self.latest = settings  # settings read by the last SIGHUP
        self.notifier = systemd.Notifier()
        self.last_status = ""
        self.announced = False
        self.reloads = 0
        self.reload_failures = 0
        self.front_pid = 0
        self.front_generation = 0  # the generation the front was last told
        self.watch = Watcher.for_settings(settings)  # serve --reload (watch.py), else None
        self.grpc_sock: socket.socket | None = None  # public listeners (_bind_public_sockets)
        self.raw_sock: socket.socket | None = None

    # --- set-up ---------------------------------------------------------------------
    def _prepare(self) -> None:
        self._claim_public_sockets()  # refuse before forking anything
        self.grpc_sock, self.raw_sock = self._bind_public_sockets()
        _become_subreaper()
        self.runtime_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Private even when it already existed (e.g. a 0755 RuntimeDirectory=): the store
        # in it holds plugin data, created with the usual 0644.
        os.chmod(self.runtime_dir, 0o750)
        # First, before touching the scoreboard or the pid file: a live server that owns
        # this runtime directory (tcp://, where no public path was claimed) is refused here.
        self.bridge_path = self.runtime_dir / "bridge.sock"
        self.bridge = sockets.bind_unix_listener(self.bridge_path, 0o600)
        for stale in self.runtime_dir.glob("stack.*"):  # left by a supervisor that was killed
            stale.unlink(missing_ok=True)
        self.identity = identity = self._worker_identity()
        self.board = Scoreboard.create(self.runtime_dir / "scoreboard")
        if not self.settings.redis_url:
            store = SQLiteStore(self.runtime_dir / STORE_FILENAME)
            store.initialise()  # before any worker opens it concurrently
            store.close()
        self.board.write_header(target_workers=self.pool.target, generation=1)
        (self.runtime_dir / "supervisor.pid").write_text(f"{os.getpid()}\n")
        if identity is not None:
            self._share_runtime_dir(*identity[:2])
        self.wake_r, self.wake_w = socket.socketpair()
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in _HANDLED:
            signal.signal(signum, self._record)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        # One channel per child (channels.py): status to us, live settings to the front.
        self.channels = Channels(self.selector)

    def _claim_public_sockets(self) -> None:
        """What would make binding the public sockets fail (here, or in the front for
        grpcio and TCP) is refused first, with exit code 2, instead of crash-looping the
        front: a path holding a non-socket, a live server, a group the socket cannot be
        given."""
        kind, address = parse_address(self.settings.socket)
        paths = [address] if kind == "unix" else []
        paths += [self.settings.raw_socket] if self.settings.raw_socket else []
        for path in paths:
            sockets.claim_unix_path(path)
        try:
            gid = self.settings.socket_gid()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        mine = {os.getegid(), *os.getgroups()}
        if paths and gid is not None and os.geteuid() != 0 and gid not in mine:
            raise ConfigError(f"socket_group {self.settings.socket_group!r}: not a member")

    def _bind_public_sockets(self) -> tuple[socket.socket | None, socket.socket | None]:
        """Bind the public Unix sockets the front serves and keep them: they outlive a
        front, so a front crash loses only its in-flight calls while new connections
        wait in the backlog for the next front, instead of being refused. The grpcio
        front (which cannot take a socket) and TCP addresses bind in the front."""
        kind, address = parse_address(self.settings.socket)
        mode, gid = self.settings.socket_mode, self.settings.socket_gid()
        grpc_sock = None
        if kind == "unix" and self.settings.front == "native":
            grpc_sock = sockets.bind_unix_listener(Path(address), mode, group=gid)
        raw = self.settings.raw_socket
        raw_sock = sockets.bind_unix_listener(Path(raw), mode, group=gid) if raw else None
        return grpc_sock, raw_sock

    def _public(self) -> list[socket.socket]:
        return [s for s in (self.grpc_sock, self.raw_sock) if s is not None]

    def _close_public(self) -> None:
        """Stopping: new connections are refused once the front closes its copies too."""
        for sock in self._public():
            sock.close()

    def _worker_identity(self) -> tuple[int, int, tuple[int, ...]] | None:
        """Who workers run as (``user``/``group``); refuses what cannot work before
        forking anything."""
        try:
            identity = self.settings.worker_identity()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if identity is None or os.geteuid() == 0:
            return identity
        if identity[:2] == (os.getuid(), os.getgid()):
            return None  # already those ids: nothing to drop
        raise ConfigError(
            f"user/group settings need the server to start as root (running as uid "
            f"{os.geteuid()}); drop them or start as root"
        )

    def _share_runtime_dir(self, uid: int, gid: int) -> None:
        """Let workers that dropped privileges keep their embedded store in the runtime
        directory, and nothing else: root-owned, group = the workers' group, sticky (they
        create files, but cannot remove or replace the bridge socket, the scoreboard or
        the pid file). The scoreboard and the bridge connection are opened before the
        drop; store files left by an earlier run as another user become the workers'."""
        os.chown(self.runtime_dir, 0, gid)
        os.chmod(self.runtime_dir, 0o1770)
        for path in self.runtime_dir.glob(STORE_FILENAME + "*"):
            os.chown(path, uid, gid, follow_symlinks=False)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)

    # --- main loop ------------------------------------------------------------------
    def run(self) -> int:
        proctitle.set(f"supervisor {self.settings.socket}")
        self._prepare()
        try:
            while True:
                for action in self.pool.plan(time.monotonic()):
                    if isinstance(action, Exit):
                        return action.code
                    self._act(action)
                self._publish()
                timeout = self.pool.next_wakeup(time.monotonic())
                self._wait(timeout if timeout is not None else 30.0)
        finally:
            self._cleanup()

    def _wait(self, timeout: float) -> None:
        self.notifier.watchdog_ping()
        if self.watch is not None:
            timeout = min(timeout, self.watch.wait_time(time.monotonic()))
        # State changes systemd's full queue could not take wait for room here, in the
        # loop, never in a blocking send (systemd.py).
        notify = self.notifier.waiting_socket()
        if notify is not None:
            self.selector.register(notify, selectors.EVENT_WRITE)
        try:
            ready = self.selector.select(min(timeout, self._watchdog_period()))
        finally:
            if notify is not None:
                self.selector.unregister(notify)
        for key, _ in ready:
            if key.fileobj is self.wake_r:
                self._drain_wakeups()
            elif key.fileobj is notify:
                self.notifier.flush()
            else:
                self._read_status(key.data)
        while self.signals:
            self._on_signal(self.signals.popleft())
        if self.watch is not None and (changed := self.watch.poll(time.monotonic())):
            log.info("--reload: %s changed", ", ".join(changed[:5]) + " ..." * (len(changed) > 5))
            self._reload()
            self.watch.retarget(watched_folders(self.latest))

    def _watchdog_period(self) -> float:
        interval = self.notifier.watchdog_interval
        return interval / 4 if interval else 30.0

    def _drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _on_signal(self, signum: int) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGCHLD: self._reap,
            signal.SIGHUP: self._reload,
            signal.SIGTERM: lambda: self._stop(graceful=True),
            signal.SIGINT: lambda: self._stop(graceful=False),
            signal.SIGQUIT: lambda: self._stop(graceful=False),
            signal.SIGTTIN: lambda: self._resize(+1),
            signal.SIGTTOU: lambda: self._resize(-1),
        }
        handlers[signum]()

    # --- events ---------------------------------------------------------------------
    def _reap(self) -> None:
        reaped = False
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reaped = True
            code = os.waitstatus_to_exitcode(status)
            proc = self.pool.procs.get(pid)
            if proc is None:
                continue  # an orphan a plugin left behind, reparented to us
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # whatever the worker's plugins spawned
            self._log_exit(pid, code, proc.state if proc else None)
            self.channels.close(pid)
            index = self.index_of.pop(pid, None)
            if index is not None:
                self._log_stack(pid, self.board.slot(index))
                self.board.clear_slot(index)
            self.pool.exited(pid, code if code >= 0 else None, time.monotonic())
            if pid == self.front_pid and self.pool.phase is Phase.STOPPING:
                # Nobody will accept bridge connections any more: reset those waiting in
                # the backlog so their workers see EOF and exit now.
                self.bridge.close()
        if reaped:
            self._kill_strays()

    def _kill_strays(self) -> None:
        """Kill every child we did not fork. As the subreaper we inherit what a plugin
        left when its worker exited: what stayed in the worker's process group died
        with it (``killpg`` above), this catches what left the group (``setsid``). Their
        own children are reparented to us in turn and caught at the next reap."""
        for child in _children():
            if child.pid in self.pool.procs:
                continue
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                log.warning("killing pid %d (%s), left behind by a plugin", child.pid, child.name())
                os.kill(child.pid, signal.SIGKILL)

    def _log_stack(self, pid: int, slot: SlotView) -> None:
        """The dead worker's fatal-signal stack dump, if any, as one record naming the call
        its slot showed (crashlog.py)."""
        dump = crashlog.collect(crashlog.stack_path(self.runtime_dir, pid))
        if not dump:
            return
        busy = slot.state is SlotState.BUSY and slot.pid == pid
        call = f"call {slot.call_id} hook {slot.hook!r}" if busy else "no call"
        log.error(
            "worker pid %d died during %s; stacks of all its threads:\n%s", pid, call, dump,
            extra={"worker_pid": pid, "generation": slot.generation,
                   "call_id": slot.call_id if busy else None, "hook": slot.hook if busy else None},
        )  # fmt: skip

    def _log_exit(self, pid: int, code: int, state: ProcState | None) -> None:
        what = "front" if pid == self.front_pid else "worker"
        if code < 0:
            level = logging.INFO if state is ProcState.RETIRING else logging.ERROR
            log.log(level, "%s pid %d killed by signal %s", what, pid, signal.Signals(-code).name)
        elif code != 0:
            log.error("%s pid %d exited with code %d", what, pid, code)
        else:
            log.debug("%s pid %d exited", what, pid)

    def _read_status(self, sender: Sender) -> None:
        """What one child said on its channel; bad or refused messages are logged and
        dropped there (channels.py), never raised."""
        for message in self.channels.receive(sender, self._is_live_worker):
            self._on_status(message)

    def _is_live_worker(self, pid: int) -> bool:
        proc = self.pool.procs.get(pid)
        return proc is not None and not proc.is_front

    def _on_status(self, message: control.Message) -> None:
        if isinstance(message, control.WorkerReady | control.FrontReady):
            self.pool.ready(message.pid)
            if isinstance(message, control.FrontReady):
                self.front_generation = 0  # a new front: tell it (``_publish``)
        elif isinstance(message, control.Stuck):
            worker = message.worker
            log.error(
                "worker pid %d stuck on call %s hook %r for %.1fs: dumping its stacks "
                "(SIGABRT) then killing it",
                worker,
                message.call_id,
                message.hook,
                message.elapsed,
                extra={"call_id": message.call_id, "hook": message.hook, "worker_pid": worker},
            )
            self.pool.stuck(worker, time.monotonic())

    def _reload(self) -> None:
        log.info("SIGHUP: reloading configuration and plugins")
        self.notifier.reloading()
        try:
            new = self.reload_settings()
        except ConfigError as exc:
            log.error("reload: invalid configuration, keeping the current one: %s", exc)
            new = self.settings
        self.latest = new  # what the next generation to start runs with
        if new is not self.settings:
            self._send_front_config(new)
        self.pool.reload(target=new.workers)

    def _send_front_config(self, new: Settings) -> None:
        """Hand the front the settings it applies live (deadlines, fail-open, queue size);
        say which changed settings only a restart applies."""
        restart = [f for f in RESTART_ONLY if getattr(new, f) != getattr(self.settings, f)]
        if restart:
            log.warning("reload: %s changed; a restart applies them", ", ".join(restart))
        if not self._send_front(control.LiveSettings.of(new)):
            log.error("reload: the front did not take its new settings; kept the old ones")

    def _send_front(self, message: control.Message) -> bool:
        """One message on the front's channel; False (logged) when there is none or it is
        full: the front does not read it."""
        front = self.channels.front()
        try:
            if front is None:
                raise ConnectionError("no front")
            front.sock.send(control.encode_frame_of(message))
        except OSError as exc:
            log.error("cannot send %r to the front: %s", message.op, exc)
            return False
        return True

    def _stop(self, graceful: bool) -> None:
        log.info("%s stop requested", "graceful" if graceful else "fast")
        self.notifier.stopping()
        self._close_public()
        self.pool.stop(graceful)

    def _resize(self, delta: int) -> None:
        self.pool.resize(delta)
        log.info("pool target is now %d workers", self.pool.target)
        self.board.write_header(target_workers=self.pool.target)

    # --- actions --------------------------------------------------------------------
    def _act(self, action: PoolAction) -> None:
        if isinstance(action, SpawnWorker):
            self._spawn_worker(action.seat, action.generation)
        elif isinstance(action, SpawnFront):
            self._spawn_front()
        elif isinstance(action, Log):
            log.log(action.level, "%s", action.message)
        elif isinstance(action, ReloadOutcome):
            self._reload_ended(action)
        elif isinstance(action, SendSignal):
            log.debug(
                "signal %s to pid %d: %s",
                signal.Signals(action.signum).name,
                action.pid,
                action.reason,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(action.pid, action.signum)

    def _fork(
        self,
        child: Callable[[], int],
        pair: tuple[socket.socket, socket.socket],
        *keep: socket.socket,
    ) -> int:
        """Fork; the child runs ``child`` holding only stdio, the child's end of its own
        ``channel`` and ``keep``: every other descriptor of ours (the wake-up socketpair,
        the other children's channels, the bridge listener unless kept, the scoreboard's
        and systemd's) is closed first, so plugin code cannot reach them."""
        mine, channel = pair
        pid = os.fork()
        if pid:
            channel.close()
            return pid
        code: int = ExitCode.ERROR
        try:
            signal.set_wakeup_fd(-1)
            for signum in _HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            self.selector.close()
            self.board.close()  # the child maps what it may write itself (a worker: its slot)
            kept = {channel.fileno(), *(sock.fileno() for sock in keep)}
            others = (self.wake_r, self.wake_w, self.bridge, *self._public())
            for sock in (mine, *others, *self.channels.sockets()):
                if sock.fileno() not in kept:
                    sock.close()
            channel.detach()  # the child owns the descriptor now (its spec carries it)
            kernel.close_fds_except({0, 1, 2, *kept})
            kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGTERM)  # supervisor gone -> drain, exit
            code = child()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _spawn_worker(self, seat: int, generation: int) -> None:
        taken = set(self.index_of.values())
        index = self.board.free_index(taken)
        # A generation runs with the settings read by the last SIGHUP before it started.
        settings = self.settings_of.setdefault(generation, self.latest)
        mine, theirs = open_pair()
        spec = WorkerSpec(
            generation,
            seat,
            index,
            self.bridge_path,
            theirs.fileno(),
            self.board.path,
            self.identity,
        )

        def child() -> int:
            os.setpgid(0, 0)  # own group: what its plugins spawn dies with it
            return self.children.worker(settings, spec)

        pid = self._fork(child, (mine, theirs))
        self.channels.attach(Sender(mine, is_front=False, generation=generation), pid)
        self.index_of[pid] = index
        self.pool.spawned(pid, generation, seat, time.monotonic())

    def _spawn_front(self) -> None:
        mine, theirs = open_pair()
        spec = FrontSpec(
            self.bridge, theirs.fileno(), self.board.path, self.grpc_sock, self.raw_sock
        )

        def child() -> int:
            return self.children.front(self.settings, spec)

        self.front_pid = self._fork(child, (mine, theirs), self.bridge, *self._public())
        self.channels.attach(Sender(mine, is_front=True), self.front_pid)
        self.pool.spawned(self.front_pid, 0, 0, time.monotonic())

    # --- reporting ------------------------------------------------------------------
    def _reload_ended(self, outcome: ReloadOutcome) -> None:
        """Count the outcome where ``tykworker reload`` waits for it, adopt the serving
        generation's settings, and tell systemd the reload is over."""
        if outcome.ready:
            self.reloads += 1
            # The generation first: ``tykworker reload`` waits for ``reloads`` to change,
            # then prints the generation it reads.
            self.board.write_header(generation=outcome.generation, reloads=self.reloads)
        else:
            log.error("reload failed: generation %d keeps serving", outcome.generation)
            self.reload_failures += 1
            self.board.write_header(reload_failures=self.reload_failures)
        self.settings = self.settings_of.get(outcome.generation, self.settings)
        word = "ready" if outcome.ready else "failed"
        self.notifier.ready(f"reload {word}; {self._status_text()}")

    def _publish(self) -> None:
        pool = self.pool
        self.board.write_header(
            generation=pool.generation,
            restarts=pool.restarts,
            import_failures=pool.import_failures,
            degraded=pool.degraded,
            target_workers=pool.target,
        )
        if self.front_generation != pool.generation and pool.front_ready:
            self._send_front(control.Generation(pool.generation))
            self.front_generation = pool.generation
        text = self._status_text()
        if not self.announced and pool.phase is Phase.RUNNING:
            self.announced = True
            log.info("ready: %s", text)
            self.notifier.ready(text)
        elif text != self.last_status:
            self.notifier.status(text)
        self.last_status = text

    def _status_text(self) -> str:
        pool = self.pool
        state = "degraded" if pool.degraded else "ok"
        return (
            f"{state}: {pool.ready_count()}/{pool.target} workers ready, "
            f"generation {pool.generation}, restarts {pool.restarts}"
        )

    def _cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        self._close_public()
        self.notifier.flush()  # what systemd can still take (STOPPING=1); never waits
        self.bridge.close()
        for path in (self.bridge_path, self.runtime_dir / "supervisor.pid"):
            path.unlink(missing_ok=True)
        kind, address = parse_address(self.settings.socket)
        if kind == "unix" and Path(address).is_socket():
            Path(address).unlink(missing_ok=True)
        if kind == "tcp" and not self.settings.runtime_dir:
            # $TMPDIR/tykworker-tcp-HOST_PORT is this server's alone (README, runtime_dir):
            # gone with it, embedded store included, so stopped servers leave nothing.
            shutil.rmtree(self.runtime_dir, ignore_errors=True)


def _children() -> list[psutil.Process]:
    try:
        return psutil.Process().children()
    except psutil.Error:
        return []


def _become_subreaper() -> None:
    """Orphans of plugin subprocesses get reparented to us, so we reap them (no zombies)."""
    if not kernel.prctl(kernel.PR_SET_CHILD_SUBREAPER, 1):
        log.debug("prctl(PR_SET_CHILD_SUBREAPER) unavailable")


def serve(settings: Settings, reload_settings: Callable[[], Settings], children: Children) -> int:
    """Run the server until stopped; returns the process exit code."""
    if "grpc" in sys.modules:
        raise RuntimeError("the supervisor must not import grpc before forking")
    return Supervisor(settings, reload_settings, children).run()

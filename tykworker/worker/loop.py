"""Worker process main loop: import plugins, connect to the front, serve one call at a time
(sync hooks), or many at once (async hooks, on the worker's event loop).

Life of a worker (forked by the supervisor, never returns into supervisor code):
1. reset signals, enable ``faulthandler`` into this worker's ``crashlog`` file (SIGABRT
   from the supervisor, or a crash in plugin C code, dumps every thread's stack even when
   stuck in C code holding the GIL; the supervisor logs it with the call); connect to the
   bridge, then, if configured (``user``/``group``, started as root), drop privileges for
   good: no plugin code ever runs with the supervisor's credentials;
2. import plugins (``plugins.load_runtime``); failure -> traceback logged, exit code 3;
3. run the ``@OnStart`` hooks (lifecycle.py; one failing: exit code 3), send HELLO on the
   bridge (naming the async hooks), report ``ready`` to the supervisor on the worker's own
   channel, and close that channel (plugin code keeps no descriptor of the supervisor's);
4. loop: read what the front sent (perhaps several calls), run each call in order, and
   write their REPLY frames (same call ids) in one write when the calls read are done
   (``_run_batch``); each reply is in the worker's journal (wire/journal.py) before the
   next call starts, where the front finds it if the worker dies first. A call
   whose hook is an ``async def`` is started as a task instead (tasks.py) and the next
   frame is read at once; its REPLY goes out when the task ends, in the first write after
   (several replies of one loop iteration in one write). The first such call switches the
   worker from its own epoll loop to its asyncio loop for good (``_serve_async``): a pool
   without async hooks keeps the epoll loop and pays nothing for them;
5. leave gracefully on SIGTERM, after ``max_requests`` calls or above ``max_rss_mb``:
   send DRAIN, keep serving whatever the front already sent, exit 0 when the front closes
   the connection. SIGQUIT/SIGINT exit at once. Bridge EOF or a new parent pid -> exit;
   the ``@OnStop`` hooks run first (after the last call);
   ``graceful_timeout`` after the supervisor died, the watchdog thread (watchdog.py)
   SIGKILLs a worker whose hook never returned.

Invariant: one sync call at a time, in the order received (an async call's task runs
between, never during, sync calls); every DISPATCH/EVENT frame received
gets exactly one REPLY (an async call the front cancelled at its deadline, ``Cancel``:
an empty one, sent when the cancel is read, which tells the front the loop still runs; a
call started as a task the front did not know as async, an EVENT or a hook the HELLO did
not name, is announced by a ``Concurrent`` CONTROL frame at once)
(the runtime never raises for plugin errors). A call the plugin failed (hook raised, no such
hook, bad payload) is announced by a CONTROL frame ``{"op": "failed", "reason": code}``
with the same call id right before its REPLY, so the front can count plugin errors without
parsing the Object; an EVENT call's REPLY is preceded by ``{"op": "handler", "name": ...}``
(then ``failed``, if any), the name the front labels it with (DISPATCH calls: none).
``logs.active_call`` names the call in progress (log fields, slow-call log with
``slow_call_threshold``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import select
import signal
import socket
import time
import traceback
from types import FrameType
from typing import Protocol

from tykworker import logs
from tykworker.config import Settings
from tykworker.errors import ExitCode, PluginLoadError, ProtocolError
from tykworker.system import crashlog, heap, kernel, memory, proctitle
from tykworker.wire import control, journal
from tykworker.wire.frames import (
    DIRECT_FROM,
    HEADER_SIZE,
    FrameDecoder,
    FrameKind,
    Payload,
    encode_frame,
    encode_header,
    peek_object_header,
)
from tykworker.wire.handoff import WorkerSpec
from tykworker.wire.journal import JournalWriter
from tykworker.wire.scoreboard import Scoreboard, SlotState, SlotWriter, slot_name
from tykworker.worker import lifecycle, tracing, watchdog
from tykworker.worker.dispatch import Pending, oversized_reply
from tykworker.worker.tasks import Tasks

log = logging.getLogger("tykworker.worker")

_RECV_SIZE = 1 << 20  # bytes per bridge read
_IOV_MAX = 512  # buffers per sendmsg (the kernel's limit is 1024)


class _Signals:
    """Signal handlers record, and the loop acts, with one exception: a
    fast stop (SIGQUIT/SIGINT) while a hook runs exits from the handler at once
    (``os._exit``), since the loop regains control only when the hook returns."""

    def __init__(self) -> None:
        self.drain = False
        self.quit = False
        self.busy = False  # a hook is running: fast stop exits at once
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT):
            signal.signal(signum, self._record)
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def _record(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGTERM:
            self.drain = True
        elif self.busy:
            os._exit(ExitCode.OK)  # fast stop: do not wait for the hook
        else:
            self.quit = True


class Worker:
    def __init__(self, settings: Settings, spec: WorkerSpec) -> None:
        self.settings = settings
        self.spec = spec
        self.pid = os.getpid()
        self.parent = os.getppid()
        self.calls = 0
        self.draining = False
        self.limit = settings.max_requests + random.randint(0, settings.max_requests_jitter)
        board = Scoreboard.open_slot(spec.scoreboard_path, spec.index)  # its slot only
        self.slot = SlotWriter(board, spec.index, self.pid, spec.generation)
        self.rss = 0
        self.label = f"worker {spec.seat} gen {spec.generation}"
        self.out: list[bytes] = []  # frames made, not yet sent (``_flush``)
        self.doing = "starting"  # the process title's last word(s) between calls
        self.running = ""  # the hook of the sync call in progress ("": none)
        self.max_reply = settings.max_message_bytes
        self.tasks = Tasks(self._complete)
        self.announced: frozenset[str] = frozenset()  # the async hooks HELLO named
        self._flush_due = False  # async mode: a flush is scheduled on the loop
        self.bridge: socket.socket | None = None  # the bridge, once connected
        #: Frames made but not yet written, readable by the front (``_emit``); None: each
        #: batch of frames is written at once (the journal could not be made).
        self.journal: JournalWriter | None = None
        self.sent = 0  # bytes written to the bridge: the stream offset of ``out``'s first

    def run(self) -> int:
        signals = _Signals()
        # Supervisor gone: killed after graceful_timeout even if a hook never returns.
        # Its ticks also turn the title back to "idle" after calls (``_refresh_title``).
        watchdog.start(self.parent, self.settings.graceful_timeout, self._refresh_title)
        # Fatal-signal stacks go to a file the supervisor logs with the call it killed
        # (crashlog.py); kept open for the life of the process.
        self.stack_file = crashlog.enable(
            crashlog.stack_path(self.spec.scoreboard_path.parent, self.pid)
        )
        logs.bind_process(worker_pid=self.pid, generation=self.spec.generation)
        # Large calls reuse the heap's pages instead of faulting fresh ones in (heap.py);
        # what they leave is given back when the worker goes idle (``_serve``).
        heap.keep_large_blocks()
        self._set_state(SlotState.STARTING)
        try:
            # Connect before dropping privileges: the bridge socket is root's alone.
            bridge = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            bridge.connect(str(self.spec.bridge_path))
        except OSError as exc:
            log.error("cannot connect to the front at %s: %s", self.spec.bridge_path, exc)
            return ExitCode.ERROR
        self.bridge = bridge
        try:  # the front's first frame (wire/journal.py)
            fd = receive_journal(bridge)
        except (OSError, ValueError) as exc:
            log.error("bridge to the front at %s broken: %s", self.spec.bridge_path, exc)
            return ExitCode.ERROR
        self.journal = _open_journal(fd)
        # tykworker's own modules are imported with the parent's credentials (they may
        # live where the workers' user cannot read), plugins only after the drop.
        from tykworker.worker.plugins import load_runtime

        if self.spec.identity is not None:
            try:
                kernel.drop_privileges(*self.spec.identity, death_signal=signal.SIGTERM)
            except OSError as exc:
                log.error("cannot switch to uid/gid %s: %s", self.spec.identity[:2], exc)
                return ExitCode.ERROR
        try:
            runtime = load_runtime(self.settings)
        except PluginLoadError as exc:
            log.error("plugins failed to import (generation %d): %s", self.spec.generation, exc)
            return ExitCode.PLUGIN_LOAD_ERROR
        except Exception:
            log.error("plugins failed to import:\n%s", traceback.format_exc())
            return ExitCode.PLUGIN_LOAD_ERROR
        runtime.spawn = self.tasks.spawn
        try:
            lifecycle.start(runtime.lifecycle, self.tasks.loop)
        except PluginLoadError as exc:
            log.error("worker not started (generation %d): %s", self.spec.generation, exc)
            runtime.close()
            return ExitCode.PLUGIN_LOAD_ERROR
        self.announced = frozenset(runtime.async_hooks())
        hello = control.Hello(
            self.pid,
            self.spec.generation,
            self.spec.index,
            tuple(sorted(self.announced)),
            self.settings.async_concurrency,
        )
        try:
            hello_frame = encode_frame(FrameKind.HELLO, 0, control.encode(hello))
            bridge.sendall(hello_frame)
            self.sent = len(hello_frame)
            if self.journal is not None:
                self.journal.reset(self.sent)
            self._report_ready()
            self._set_state(SlotState.IDLE)
            self._title("idle")
            if self.settings.slow_call_threshold > 0:
                logs.SlowCallLog(self.settings.slow_call_threshold).start()
            # What exists now (tykworker, the plugins and their imports, @OnStart's
            # clients) lives as long as the worker: out of the collector's sight, a full
            # collection scans only what calls made (with hundreds of async calls in
            # flight it took ~15 % of the worker's time), and the pages shared with the
            # supervisor since the fork are not written by the collector's bookkeeping.
            gc.freeze()
            return self._serve(bridge, runtime, signals)
        except OSError as exc:  # the front closed a connection that plugin code broke
            log.error("bridge connection lost: %s", exc)
            return ExitCode.ERROR
        finally:
            self.tasks.cancel_all(grace=1.0)  # answered or orphaned calls: before @OnStop
            lifecycle.stop(runtime.lifecycle, self.tasks.loop, self.settings.graceful_timeout)
            self.tasks.close()
            runtime.close()

    def _report_ready(self) -> None:
        """Tell the supervisor, then close the channel: the worker has nothing more to
        say, and plugin code (which runs from now on) keeps no way to the supervisor."""
        ready = control.WorkerReady(self.pid, self.spec.generation)
        with contextlib.suppress(OSError):  # wait for room, whatever plugin code set
            os.set_blocking(self.spec.channel_fd, True)
        if not control.report(self.spec.channel_fd, ready):
            log.error("could not tell the supervisor that this worker is ready")
        with contextlib.suppress(OSError):  # plugin import code may have closed it
            os.close(self.spec.channel_fd)

    def _serve(self, bridge: socket.socket, runtime: _Runtime, signals: _Signals) -> int:
        # A large call is received straight into a buffer of its size (no copies through
        # the decoder's buffer, no growing it): ``direct_buffer``.
        decoder = FrameDecoder(self.settings.max_message_bytes, direct_from=DIRECT_FROM)
        # One receive buffer for the life of the worker: ``recv(1 MiB)`` would allocate (and
        # the allocator mmap/mremap/munmap) a fresh MiB per call.
        buffer = bytearray(_RECV_SIZE)
        view = memoryview(buffer)
        # epoll itself, not ``selectors``: its per-wait Python layer costs as much as the
        # system call, once per batch of calls.
        poller = select.epoll()
        poller.register(bridge.fileno(), select.EPOLLIN)
        poller.register(signals.wake_r.fileno(), select.EPOLLIN)
        wake = signals.wake_r.fileno()
        released = True  # nothing to give back to the kernel since the last idle wait
        while True:
            if signals.quit:
                return ExitCode.OK
            if signals.drain and not self.draining:
                self._start_drain("SIGTERM")
                self._flush(bridge)
            signals.busy = False
            events = poller.poll(5.0)
            if not events:
                if os.getppid() != self.parent:
                    # Between calls only: parent-death SIGTERM and the watchdog thread
                    # cover a worker kept busy; a system call per wake-up is not worth it.
                    log.warning("supervisor went away; exiting")
                    return ExitCode.OK
                if not released:  # idle for a while: the heap's free pages go back
                    released = True
                    heap.release()
                continue
            released = False
            for fd, _ in events:
                if fd == wake:
                    signals.wake_r.recv(512)
                    continue
                direct = decoder.direct_buffer()
                try:
                    size = bridge.recv_into(buffer if direct is None else direct)
                except OSError:
                    size = 0
                if not size:
                    return ExitCode.OK  # front closed: drained, or front gone
                signals.busy = True
                try:
                    if direct is None:
                        decoder.feed(view[:size])
                    else:
                        decoder.advance(size)
                        direct.release()
                    self._run_batch(bridge, runtime, decoder)
                except ProtocolError as exc:
                    log.error("bridge protocol error: %s", exc)
                    return ExitCode.ERROR
                if self.tasks.busy:  # async calls started: the event loop serves from now on
                    poller.close()
                    return self._serve_async(bridge, runtime, signals, decoder, buffer)

    def _serve_async(
        self,
        bridge: socket.socket,
        runtime: _Runtime,
        signals: _Signals,
        decoder: FrameDecoder,
        buffer: bytearray,
    ) -> int:
        """``_serve`` on the worker's event loop (``Tasks.serve``): sync calls run inline
        in the bridge's read callback, async ones as tasks. Plugin code may run whenever
        the loop does, so a fast stop exits at once from now on."""
        view = memoryview(buffer)
        signals.busy = True

        def on_data(size: int) -> int | None:
            try:
                decoder.feed(view[:size])
                self._run_batch(bridge, runtime, decoder)
            except ProtocolError as exc:
                log.error("bridge protocol error: %s", exc)
                return ExitCode.ERROR
            return None

        def on_wake() -> int | None:
            if signals.quit:
                return ExitCode.OK
            if signals.drain and not self.draining:
                self._start_drain("SIGTERM")
                self._flush(bridge)
            return None

        alive = control.encode_frame_of(control.Alive())

        def on_beat() -> None:
            self._emit((alive,))
            self._flush(bridge)

        self._flush_tasks()  # what the batch that started the first task made
        wake = signals.wake_r
        return self.tasks.serve(bridge, buffer, wake, on_data, on_wake, self.parent, on_beat)

    def _run_batch(self, bridge: socket.socket, runtime: _Runtime, decoder: FrameDecoder) -> None:
        """Run every call whose frame is complete, in order: under load the front sends
        calls ahead (front/router.py), so the worker finds the next one without sleeping.
        Their replies go out in one write once the calls read are done; each one is in the
        journal before the next call starts: if that call kills the worker (or hangs past
        its deadline), the front reads the replies made from the journal, knows which call
        did it (the first it has no reply for) and that the others never ran (it routes
        them again). The front sends a call behind another only when both are of hooks
        that have been fast (router.py), so a reply waits for a slow call only when a
        fast hook turns slow, and its deadline reads it from the journal even then."""
        handled = False
        while (frame := decoder.next_frame()) is not None:
            self._handle(runtime, frame.kind, frame.call_id, frame.payload)
            if not self.draining:
                self._check_recycle()
            handled = True
        self._flush(bridge)
        if handled and (self.tasks.live or self.draining):
            self._title(self._doing())  # "idle": at the next watchdog tick

    def _handle(self, runtime: _Runtime, kind: int, call_id: int, payload: Payload) -> None:
        if kind == FrameKind.DISPATCH:
            hook, run = peek_object_header(payload)[1], runtime.start_dispatch
        elif kind == FrameKind.EVENT:
            hook, run = "event", runtime.start_event
        elif kind == FrameKind.CONTROL:
            self._on_control(call_id, payload)
            return
        elif kind in tracing.PLAIN:  # the same call with a trace context (worker/tracing.py)
            tracing.run(
                kind, payload, lambda plain, obj: self._handle(runtime, plain, call_id, obj)
            )
            return
        else:
            log.warning("unexpected %s frame on the bridge", kind)
            return
        logs.begin_call(call_id, hook)
        self._set_state(SlotState.BUSY, call_id, hook)
        self.running = hook or "?"
        self._title(f"running {self.running}")  # no system call for a run of one hook
        reply = run(payload)
        self.running = ""
        if type(reply) is not bytes:
            self._start_task(kind, call_id, hook, payload, reply)  # type: ignore[arg-type]
            return
        if len(reply) > self.max_reply:  # would break the bridge: a defined answer instead
            reply = oversized_reply(payload, len(reply), self.max_reply)
        logs.end_call()
        head = encode_header(FrameKind.REPLY, call_id, len(reply))
        if logs.active_call.failure:  # tell the front before the reply (its metrics)
            failed = control.Failed(logs.active_call.failure)
            head = control.encode_frame_of(failed, call_id) + head
        if kind == FrameKind.EVENT:  # the handler's name, which the front cannot read
            named = control.Handler(logs.active_call.hook)
            head = control.encode_frame_of(named, call_id) + head
        self._emit((head, reply))
        self.calls += 1
        self._set_state(SlotState.DRAINING if self.draining else SlotState.IDLE)

    def _start_task(
        self, kind: int, call_id: int, hook: str, payload: bytes | bytearray, pending: Pending
    ) -> None:
        """Run an async call's ``pending`` reply as a task (``_complete`` frames it)."""
        call = logs.active_call
        record = logs.ActiveCall(call_id, call.hook, call.api_id, call.started)
        record.on_end, call.on_end = call.on_end, None  # its trace span ends with the task
        logs.end_call()
        self.tasks.start(kind, call_id, record, payload, pending)
        if kind != FrameKind.DISPATCH or hook not in self.announced:
            self._emit((control.encode_frame_of(control.Concurrent(), call_id),))
        self._set_state(SlotState.DRAINING if self.draining else SlotState.IDLE)

    def _complete(
        self,
        kind: int,
        call_id: int,
        record: logs.ActiveCall,
        payload: bytes | bytearray,
        reply: bytes,
    ) -> None:
        """An async call's task ended with ``reply``: frame it as ``_handle`` does (inside
        the task: ``oversized_reply`` notes its failure in the call's own record)."""
        if len(reply) > self.max_reply:
            reply = oversized_reply(payload, len(reply), self.max_reply)
        head = encode_header(FrameKind.REPLY, call_id, len(reply))
        if record.failure:
            head = control.encode_frame_of(control.Failed(record.failure), call_id) + head
        if kind == FrameKind.EVENT:
            head = control.encode_frame_of(control.Handler(record.hook), call_id) + head
        self._emit((head, reply))
        self.calls += 1
        if not self._flush_due:
            self._flush_due = True
            self.tasks.loop().call_soon(self._flush_tasks)

    def _flush_tasks(self) -> None:
        """Send the replies the loop's tasks made in this iteration, in one write."""
        self._flush_due = False
        if not self.draining:
            self._check_recycle()
        self._set_state(SlotState.DRAINING if self.draining else SlotState.IDLE)
        self._title(self._doing())
        if self.bridge is not None:
            self._flush(self.bridge)

    def _on_control(self, call_id: int, payload: bytes | bytearray) -> None:
        """The front's ``Cancel``: the async call ``call_id`` was answered at its deadline.
        Its task is cancelled and the empty REPLY acknowledges it (none if the call
        already replied: that late reply was the front's acknowledgement)."""
        try:
            message = control.decode(payload)
        except ProtocolError as exc:
            log.warning("bad control message from the front dropped: %s", exc)
            return
        if isinstance(message, control.Cancel) and self.tasks.cancel(call_id):
            log.info("async call %d cancelled at its deadline", call_id)
            self._emit((encode_header(FrameKind.REPLY, call_id, 0),))
            # Hooks that go on after their cancellation hold memory the front no longer
            # counts: past a worker's worth of them, it is replaced.
            stale = len(self.tasks.cancelled)
            if stale >= self.settings.async_concurrency and not self.draining:
                self._start_drain(f"{stale} cancelled async calls still running")

    def _doing(self) -> str:
        """The title's last words between calls."""
        if self.tasks.live:
            return f"{'draining' if self.draining else 'running'} {len(self.tasks.live)} async"
        return "draining" if self.draining else "idle"

    def _title(self, doing: str) -> None:
        """The process title says what the worker does (``ps``); set only on a change
        (a system call each)."""
        if doing != self.doing:
            self.doing = doing
            proctitle.set(f"{self.label} {doing}")

    def _refresh_title(self) -> None:
        """From the watchdog thread, each ``watchdog.PERIOD``: between calls, the title
        says what the worker does (``_doing``). A sync call sets ``running <hook>`` before
        its hook starts (shown even if the hook never gives the GIL back) and leaves it
        when it ends: under load the title stays ``running <hook>`` across calls of one
        hook, with no system call, where setting "idle" after each batch cost two
        (``prctl``) per batch, ~7 % of a busy worker's time; it says "idle" at most one
        period after the last call."""
        if not self.running:
            self._title(self._doing())

    def _emit(self, parts: tuple[bytes, ...]) -> None:
        """Queue frames for the next ``_flush``: in the journal, which holds them until
        then; frames it has no room for are written at once, after those it holds."""
        journal = self.journal
        if journal is not None and journal.append(parts):
            return
        self.out += parts
        bridge = self.bridge
        if bridge is not None:
            self._flush(bridge)

    def _flush(self, bridge: socket.socket) -> None:
        """Send the frames made so far, in order: those the journal holds, straight from
        its memory (not copied again), then the rest (``out``)."""
        journal = self.journal
        held = 0 if journal is None else journal.length
        if not held and not self.out:
            return
        out, self.out = self.out, []
        # A front that closed first (it drained us on a reload, or it is gone) cannot
        # take them; the next read sees its end of file and the worker exits.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if journal is not None and held:
                with journal.committed() as view:
                    bridge.sendall(view)
                self.sent += held
            if out:
                self.sent += _send_all(bridge, out)
        if journal is not None:
            journal.reset(self.sent)

    def _check_recycle(self) -> None:
        if self.settings.max_requests and self.calls >= self.limit:
            self._start_drain(f"served {self.calls} calls")
        elif self.settings.max_rss_mb and self.rss > self.settings.max_rss_mb * 1024 * 1024:
            self._start_drain(f"RSS {self.rss // (1024 * 1024)} MiB over the limit")

    def _start_drain(self, why: str) -> None:
        """Queue DRAIN after the replies made so far (sent with them)."""
        log.info("%s leaving: %s", self.label, why)
        self.draining = True
        self._emit((encode_frame(FrameKind.DRAIN, 0),))
        self._set_state(SlotState.DRAINING)
        self._title("draining")

    def _set_state(self, state: SlotState, call_id: int = 0, hook: str = "") -> None:
        # RSS costs a /proc read (~8 µs): after every call only when recycling by memory.
        if state is not SlotState.BUSY and (self.settings.max_rss_mb or self.calls % 64 == 0):
            self.rss = memory.rss_bytes()
        in_flight = len(self.tasks.live)
        started_at = time.time() if state is SlotState.BUSY else 0.0
        if in_flight:  # async calls: the oldest one is the slot's current call
            if state is SlotState.BUSY:
                in_flight += 1
            else:
                oldest = self.tasks.oldest()
                assert oldest is not None
                hook, started_at = oldest.hook, oldest.started_at
                if state is SlotState.IDLE:
                    state = SlotState.BUSY
        elif state is SlotState.BUSY:
            in_flight = 1
        name = slot_name(hook)
        self.slot.write(state, call_id, started_at, self.calls, self.rss, name, in_flight)


class _Runtime(Protocol):
    """What the loop needs of ``plugins.Runtime``."""

    def start_dispatch(self, payload: bytes | bytearray) -> bytes | Pending: ...

    def start_event(self, payload: bytes | bytearray) -> bytes | Pending: ...

    def close(self) -> None: ...


def _send_all(sock: socket.socket, parts: list[bytes]) -> int:
    """All of ``parts``, in order, without copying large ones: small batches are joined
    into one ``send``; larger ones go out by ``sendmsg`` (gathered), continued with
    ``sendall`` from wherever the kernel stopped. Returns the bytes sent (all)."""
    total = sum(map(len, parts))
    if total < 65536:
        sock.sendall(b"".join(parts))
        return total
    for start in range(0, len(parts), _IOV_MAX):
        chunk = parts[start : start + _IOV_MAX]
        sent = sock.sendmsg(chunk)
        for part in chunk:
            if sent >= len(part):
                sent -= len(part)
                continue
            with memoryview(part) as view:
                sock.sendall(view[sent:])
            sent = 0
    return total


def run_worker(settings: Settings, spec: WorkerSpec) -> int:
    """Entry point in the forked child; returns the exit code."""
    proctitle.set(f"worker {spec.seat} gen {spec.generation} starting")
    tracing.start(settings, spec.generation)  # here, after fork, before plugins import
    try:
        return Worker(settings, spec).run()
    finally:
        tracing.stop()


def receive_journal(sock: socket.socket) -> int | None:
    """Read the bridge's first frame (blocking, right after connecting): the reply
    journal's descriptor (wire/journal.py), or None where the front sent none.
    ``ValueError`` if it is not that frame (a descriptor that came with it is closed)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, HEADER_SIZE, 1, socket.MSG_CMSG_CLOEXEC)
    try:
        while 0 < len(data) < HEADER_SIZE and (more := sock.recv(HEADER_SIZE - len(data))):
            data += more
        journal.check_first_frame(data)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds[0] if fds else None


def _open_journal(fd: int | None) -> JournalWriter | None:
    """The journal the front sent (``receive_journal``), mapped; None (logged: every
    reply is then written at once) without one. Closes ``fd``: the map keeps its own."""
    if fd is None:
        log.warning("no reply journal from the front: every reply is written at once")
        return None
    try:
        return JournalWriter(fd)
    except (OSError, ValueError) as exc:
        log.warning("no reply journal (%s): every reply is written at once", exc)
        return None
    finally:
        os.close(fd)

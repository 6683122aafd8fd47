"""Pure pool planning: given what happened, decide what the supervisor must do.

No I/O, no clock of its own: every input carries ``now`` (monotonic seconds) when time
matters, and returns nothing; ``plan(now)`` returns every action the supervisor must take
(spawn, signal, log, report a reload outcome, exit), including those decided while an
input was handled. ``next_wakeup`` tells the supervisor how long it may sleep. Nothing
outside changes the pool's fields: it is driven only through its input methods. Tested on
a fake clock in tests/unit/test_pool.py.

Model: ``target`` seats (0..target-1) per generation; a worker process fills one seat
(its scoreboard slot is another number, chosen by the supervisor). A process is STARTING
until it reports READY, then READY; RETIRING once asked to stop (SIGTERM); STUCK once the front
reported it past its deadline (SIGABRT then SIGKILL).

Invariants:
* At most one live non-retiring process per (generation, seat).
* A new generation replaces the old one only when all its seats are READY (so calls are
  never routed to code that has not imported); if one of its processes fails to import
  (exit code 3), the reload is abandoned and the old generation keeps serving.
* Generation numbers are never reused (an abandoned generation's leftovers stay
  recognisable). A reload requested while one is in progress is never dropped: it is
  coalesced into one more reload that starts when the current one ends, so the code and
  configuration of the *last* SIGHUP always end up serving; ``ReloadOutcome`` is planned
  only when no reload is left to do (a storm of N SIGHUPs reports once).
* Abnormal exits of current-generation workers respawn with exponential backoff per seat
  (0.1 s doubling to 30 s); a process alive for more than ``STABLE_AFTER`` seconds resets
  its seat's backoff. The front's first crash in a row respawns it at once (nothing is
  served without a front; the grpcio front's socket refuses connections until then), the
  next ones back off like a worker's. A crash loop never stops the supervisor: it
  reports ``degraded``.
* At first start, an import failure stops the whole server with exit code 3.
* Stop: the front drains first (it answers every call it accepted), then workers get
  SIGTERM, then SIGKILL after ``graceful_timeout``.
"""

from __future__ import annotations

import enum
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from tykworker.errors import ExitCode

BACKOFF_START = 0.1
BACKOFF_MAX = 30.0
STABLE_AFTER = 10.0
ABORT_GRACE = 2.0  # seconds between SIGABRT (stack dump) and SIGKILL


class ProcState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    RETIRING = "retiring"
    STUCK = "stuck"


class Phase(enum.Enum):
    BOOT = "boot"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass(slots=True)
class Proc:
    pid: int
    generation: int  # 0 = the front
    seat: int
    started_at: float
    state: ProcState = ProcState.STARTING
    signalled_at: float | None = None  # when SIGTERM/SIGABRT was sent
    killed: bool = False  # SIGKILL sent; only reaping is left

    @property
    def is_front(self) -> bool:
        return self.generation == 0


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    seat: int
    generation: int


@dataclass(frozen=True, slots=True)
class SpawnFront:
    pass


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Send ``signum`` to ``pid`` (SIGTERM/SIGQUIT: stop; SIGABRT: dump stacks; SIGKILL)."""

    pid: int
    signum: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the operator, at ``level`` (a ``logging`` level)."""

    message: str
    level: int = logging.INFO


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """The reload (or coalesced run of reloads) ended; ``generation`` serves now."""

    ready: bool
    generation: int


@dataclass(frozen=True, slots=True)
class Exit:
    code: int


PoolAction = SpawnWorker | SpawnFront | SendSignal | Log | ReloadOutcome | Exit


@dataclass(slots=True)
class Pool:
    target: int
    graceful_timeout: float
    generation: int = 1
    pending_generation: int | None = None  # reload in progress
    newest_generation: int = 1  # highest generation number ever started
    reload_queued: bool = False  # a SIGHUP arrived during the reload in progress
    phase: Phase = Phase.BOOT
    procs: dict[int, Proc] = field(default_factory=dict)
    failures: dict[tuple[int, int], int] = field(default_factory=dict)  # (gen, seat)
    not_before: dict[tuple[int, int], float] = field(default_factory=dict)
    front_ready: bool = False
    fast_stop: bool = False
    restarts: int = 0  # workers that died after starting (crash, kill); refilled
    import_failures: int = 0  # workers that exited because plugins failed to import
    abandoned: set[int] = field(default_factory=set)  # generations whose reload failed
    exit_code: int = ExitCode.OK
    # Actions decided while handling an input; ``plan`` returns them first.
    outbox: list[PoolAction] = field(default_factory=list)

    # --- inputs ---------------------------------------------------------------------
    def spawned(self, pid: int, generation: int, seat: int, now: float) -> None:
        self.procs[pid] = Proc(pid, generation, seat, now)

    def ready(self, pid: int) -> None:
        proc = self.procs.get(pid)
        if proc is None or proc.state is not ProcState.STARTING:
            return
        proc.state = ProcState.READY
        if proc.is_front:
            self.front_ready = True

    def stuck(self, pid: int, now: float) -> None:
        """The front reported ``pid`` past a call's deadline: the next plan dumps its
        stacks (SIGABRT), then kills it ``ABORT_GRACE`` seconds later."""
        proc = self.procs.get(pid)
        if proc is None or proc.is_front or proc.state is ProcState.STUCK:
            return
        proc.state, proc.signalled_at = ProcState.STUCK, now
        self.outbox.append(SendSignal(pid, signal.SIGABRT, "call past its deadline"))

    def exited(self, pid: int, code: int | None, now: float) -> None:
        """A child was reaped. ``code`` is the exit code, or None if killed by a signal."""
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        if proc.is_front:
            self.front_ready = False
        import_failed = code == ExitCode.PLUGIN_LOAD_ERROR and proc.state is ProcState.STARTING
        if import_failed:
            self.import_failures += 1
            self._import_failed(proc)
        if self.phase is Phase.STOPPING or proc.state is ProcState.RETIRING:
            return
        if code == ExitCode.OK or proc.state is ProcState.STUCK:
            self.restarts += proc.state is ProcState.STUCK
            return  # recycled or killed on purpose: refill at once
        key = (proc.generation, proc.seat)
        if now - proc.started_at > STABLE_AFTER:
            self.failures.pop(key, None)
        count = self.failures.get(key, 0) + 1
        self.failures[key] = count
        # The front's first crash in a row: at once (nothing serves without it), then 0.1 s...
        backoffs = count - 1 - proc.is_front
        delay = 0.0 if backoffs < 0 else min(BACKOFF_START * 2**backoffs, BACKOFF_MAX)
        self.not_before[key] = now + delay
        self.restarts += not import_failed  # counted apart: it never served

    def reload(self, target: int | None = None) -> None:
        """SIGHUP: roll a new generation, of ``target`` workers if given."""
        if self.phase is Phase.STOPPING:
            return
        if target is not None:
            self.target = max(1, target)
        if self.pending_generation is not None:
            self.reload_queued = True  # coalesced: starts when the current one ends
            return
        self._begin_reload()

    def stop(self, graceful: bool) -> None:
        self.phase = Phase.STOPPING
        self.fast_stop = self.fast_stop or not graceful

    def resize(self, delta: int) -> None:
        """SIGTTIN/SIGTTOU: one worker more or fewer (never fewer than one)."""
        self.target = max(1, self.target + delta)

    # --- planning -------------------------------------------------------------------
    def plan(self, now: float) -> list[PoolAction]:
        """Every action due at ``now``: first those decided by inputs and by this plan
        (logs, SIGABRT for stuck workers, reload outcomes), then spawns and signals;
        ``Exit`` comes last and only once nothing is left alive."""
        actions = self._plan_stop(now) if self.phase is Phase.STOPPING else self._plan_run(now)
        queued, self.outbox = self.outbox, []
        return queued + actions

    def _plan_run(self, now: float) -> list[PoolAction]:
        actions: list[PoolAction] = []
        if self._front() is None and self._may_spawn((0, 0), now):
            actions.append(SpawnFront())
        actions += self._fill(self.generation, now)
        pending = self.pending_generation
        if pending is not None:
            actions += self._fill(pending, now)
            actions += self._maybe_switch(now)
            if self.pending_generation not in (None, pending):  # a queued reload began
                actions += self._fill(self.pending_generation, now)
        if self.abandoned:
            actions += self._retire(lambda p: p.generation in self.abandoned, now, "reload failed")
        actions += self._retire_surplus(now)
        actions += self._escalate(now)
        if self.phase is Phase.BOOT and self.front_ready and self.ready_count() >= self.target:
            self.phase = Phase.RUNNING
        return actions

    def next_wakeup(self, now: float) -> float | None:
        """Seconds until ``plan`` may have something new to do on its own (None = only
        events can change anything)."""
        times = [t for t in self.not_before.values() if t > now]
        times += [
            p.signalled_at + (ABORT_GRACE if p.state is ProcState.STUCK else self.graceful_timeout)
            for p in self.procs.values()
            if p.signalled_at is not None and not p.killed
        ]
        return max(0.0, min(times) - now) if times else None

    # --- queries --------------------------------------------------------------------
    def ready_count(self, generation: int | None = None) -> int:
        gen = self.generation if generation is None else generation
        return sum(
            1 for p in self.procs.values() if p.generation == gen and p.state is ProcState.READY
        )

    @property
    def degraded(self) -> bool:
        return self.phase is not Phase.STOPPING and (
            self.ready_count() < self.target or not self.front_ready
        )

    # --- internals ------------------------------------------------------------------
    def _front(self) -> Proc | None:
        return next((p for p in self.procs.values() if p.is_front), None)

    def _may_spawn(self, key: tuple[int, int], now: float) -> bool:
        return now >= self.not_before.get(key, 0.0)

    def _fill(self, generation: int, now: float) -> list[PoolAction]:
        live = {
            p.seat
            for p in self.procs.values()
            if p.generation == generation and p.state is not ProcState.RETIRING
        }
        return [
            SpawnWorker(seat, generation)
            for seat in range(self.target)
            if seat not in live and self._may_spawn((generation, seat), now)
        ]

    def _maybe_switch(self, now: float) -> list[PoolAction]:
        new = self.pending_generation
        if new is None or self.ready_count(new) < self.target:
            return []
        old, self.generation, self.pending_generation = self.generation, new, None
        self.outbox.append(Log(f"generation {new} ready, retiring generation {old}"))
        self._end_reload(ready=True)
        return self._retire(lambda p: p.generation == old, now, "replaced by a reload")

    def _retire_surplus(self, now: float) -> list[PoolAction]:
        return self._retire(
            lambda p: not p.is_front and p.generation == self.generation and p.seat >= self.target,
            now,
            "pool shrunk",
        )

    def _retire(self, which: Callable[[Proc], bool], now: float, reason: str) -> list[PoolAction]:
        actions: list[PoolAction] = []
        for proc in self.procs.values():
            if which(proc) and proc.state in (
                ProcState.STARTING,
                ProcState.READY,
            ):
                proc.state, proc.signalled_at = ProcState.RETIRING, now
                actions.append(SendSignal(proc.pid, signal.SIGTERM, reason))
        return actions

    def _escalate(self, now: float) -> list[PoolAction]:
        actions: list[PoolAction] = []
        for proc in self.procs.values():
            if proc.signalled_at is None or proc.killed:
                continue
            grace = ABORT_GRACE if proc.state is ProcState.STUCK else self.graceful_timeout
            if now >= proc.signalled_at + grace:
                proc.killed = True  # SIGKILL once; reaping removes it
                actions.append(SendSignal(proc.pid, signal.SIGKILL, "did not exit in time"))
        return actions

    def _import_failed(self, proc: Proc) -> None:
        if self.phase is Phase.BOOT and proc.generation == self.generation:
            self.outbox.append(Log("plugins failed to import at start; stopping", logging.ERROR))
            self.exit_code = ExitCode.PLUGIN_LOAD_ERROR
            self.stop(graceful=False)
        elif proc.generation == self.pending_generation:
            self.outbox.append(
                Log(
                    f"reload abandoned: generation {proc.generation} failed to import; "
                    f"generation {self.generation} keeps serving"
                )
            )
            self._abandon_reload()

    def _abandon_reload(self) -> None:
        if self.pending_generation is not None:
            self.abandoned.add(self.pending_generation)
        self.pending_generation = None
        self._end_reload(ready=False)

    def _begin_reload(self) -> None:
        self.reload_queued = False
        self.newest_generation = max(self.newest_generation, self.generation) + 1
        self.pending_generation = self.newest_generation

    def _end_reload(self, ready: bool) -> None:
        if self.reload_queued and self.phase is not Phase.STOPPING:
            outcome = "ready" if ready else "failed"
            self.outbox.append(
                Log(
                    f"reload {outcome}, but another was requested meanwhile: "
                    f"starting generation {max(self.newest_generation, self.generation) + 1}"
                )
            )
            self._begin_reload()
        else:
            self.reload_queued = False
            self.outbox.append(ReloadOutcome(ready, self.generation))

    def _plan_stop(self, now: float) -> list[PoolAction]:
        actions: list[PoolAction] = []
        front = self._front()
        sig = signal.SIGQUIT if self.fast_stop else signal.SIGTERM
        for proc in self.procs.values():
            if proc.killed or proc.state is ProcState.STUCK:
                continue
            if proc.state is ProcState.RETIRING and proc.signalled_at is not None:
                continue
            if proc.is_front or front is None or self.fast_stop:
                proc.state, proc.signalled_at = ProcState.RETIRING, now
                actions.append(SendSignal(proc.pid, sig, "stopping"))
        actions += self._escalate(now)
        if not self.procs:
            actions.append(Exit(self.exit_code))
        return actions

"""Progress watch: every rank's heartbeat in the job directory, and a watchdog that fails a stalled job.

:class:`cluster.runtime.RankTask` starts a watchdog thread on every rank (:func:`start`). It writes
``<job_dir>/heartbeats/rank<R>.json``: host, pid, the last finished step and when it finished, and
``alive_at``, refreshed every ``interval`` seconds by the thread itself, so it goes stale when the
process is stopped, frozen or its node is gone (a rank blocked in a collective keeps it fresh).
A training task counts its steps with :func:`step_poll`, the training loop's ``should_stop``: each
call is one finished optimizer step. From that call on the rank is watched: when a watched rank has
finished no step for ``stall_timeout`` seconds, the watchdog writes ``logs/stalled.json`` and
``logs/rank<R>.traceback`` naming the silent rank, its last step and since when, and ends its own
process with :data:`STALL_EXIT_CODE`; the executor then ends the job as for any failed rank (the
local supervisor kills the others, srun's ``--kill-on-bad-exit``), FAILED, for a resubmit to
resume from the last checkpoint. No supervisor is needed on the node: rank 0 watches every rank,
the other ranks watch rank 0 and act only when rank 0's own watchdog is silent too.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from cluster import preemption

HEARTBEAT_DIR = "heartbeats"
STALL_RECORD = "stalled.json"
"""Written into ``<job_dir>/logs`` by the watchdog that failed the job."""
STALL_EXIT_CODE = 124
"""Exit status of the rank whose watchdog ended a stalled job."""
FROZEN_AFTER_MIN_S = 15.0
"""A rank's process counts as frozen when its watchdog wrote nothing for ``max(5 x interval, this)``."""

_watch: Watch | None = None


def _write(path: Path, text: str, durable: bool = False) -> None:
    """Replace ``path`` (mode 0600) through a temporary file; ``durable``: fsync first. Heartbeats are
    not fsynced: a lost one is rewritten within an interval, and a shared filesystem is spared."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def utc(epoch: float) -> str:
    """``epoch`` as the job records write times (2026-12-02T15:04:05Z)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def interval_for(stall_timeout: float) -> float:
    """Seconds between a watchdog's writes and checks: a twentieth of the timeout, 1 to 30 s."""
    return min(30.0, max(1.0, stall_timeout / 20))


@dataclass
class Stall:
    """The rank a stalled job waits for, as its heartbeat shows it."""

    rank: int
    host: str
    pid: int
    step: int | None
    since: float
    """When it finished its last step (or, before its first, when its step count started)."""
    silent_s: float
    """Seconds since then."""
    answered_s: float
    """Seconds since its watchdog last wrote."""
    frozen: bool
    """Silent long enough to call its process frozen (:func:`frozen`)."""
    interval: float
    stall_timeout: float

    def describe(self) -> str:
        """One line: the rank, its last step, since when, and whether its process still answers."""
        step = f"last step {self.step}" if self.step is not None else "no step yet"
        if self.frozen:
            why = f"its process stopped answering {self.answered_s:.0f} s ago (stopped, frozen, or its node is gone)"
        elif self.answered_s > 2 * self.interval + 1:
            why = f"its process last answered {self.answered_s:.0f} s ago"
        else:
            why = "its process is alive (a hung collective or kernel?)"
        return (f"rank {self.rank} (pid {self.pid} on {self.host}) has finished no step since "
                f"{utc(self.since)} ({self.silent_s:.0f} s; {step}); {why}")


def read_heartbeats(job_dir: Path) -> dict[int, dict]:
    """``{rank: heartbeat}`` of the job in ``job_dir`` (unreadable files are skipped)."""
    beats = {}
    for path in Path(job_dir, HEARTBEAT_DIR).glob("rank*.json"):
        try:
            beat = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        beats[int(beat["rank"])] = beat
    return beats


def frozen(beat: dict, now: float) -> bool:
    """Whether the rank's watchdog has been silent for ``max(5 x interval, FROZEN_AFTER_MIN_S)``."""
    return now - beat["alive_at"] > max(5 * beat["interval"], FROZEN_AFTER_MIN_S)


def silent_rank(beats: dict[int, dict], now: float | None = None) -> Stall | None:
    """The watched rank the others wait for: a frozen one first, else the one with the lowest step
    (the oldest among equals); None when no rank's steps are watched."""
    now = time.time() if now is None else now
    watched = [b for b in beats.values() if b.get("watched") and not b.get("done")]
    if not watched:
        return None
    stuck = [b for b in watched if frozen(b, now)]
    beat = min(stuck or watched, key=lambda b: (-1 if b["step"] is None else b["step"], b["step_at"]))
    return Stall(rank=beat["rank"], host=beat["host"], pid=beat["pid"], step=beat["step"], since=beat["step_at"],
                 silent_s=now - beat["step_at"], answered_s=now - beat["alive_at"], frozen=frozen(beat, now),
                 interval=beat["interval"], stall_timeout=beat["stall_timeout"])


def stall_notice(job_dir: Path, now: float | None = None) -> Stall | None:
    """What ``jobs.status`` shows as STALLED: the silent rank when its process is frozen, or when
    it finished a step in this run and none for a quarter of ``--stall_timeout`` since."""
    beats = read_heartbeats(job_dir)
    stall = silent_rank(beats, now)
    if stall is None:
        return None
    stepped = stall.step is not None and stall.step > beats[stall.rank]["first_step"]
    if stall.frozen or (stepped and stall.silent_s > stall.stall_timeout / 4):
        return stall
    return None


def read_stall(job_dir: Path) -> dict | None:
    """The record of the stall that failed the job in ``job_dir`` (``logs/stalled.json``), if any."""
    try:
        return json.loads(Path(job_dir, "logs", STALL_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Watch:
    """One rank's heartbeat and watchdog thread (see the module's docstring)."""

    def __init__(self, job_dir: Path, rank: int, stall_timeout: float) -> None:
        self.job_dir = Path(job_dir)
        self.rank = rank
        self.stall_timeout = stall_timeout
        self.interval = interval_for(stall_timeout)
        self.path = self.job_dir / HEARTBEAT_DIR / f"rank{rank}.json"
        self.beat = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "stall_timeout": stall_timeout,
                     "interval": self.interval, "watched": False, "first_step": None, "step": None,
                     "step_at": time.time(), "alive_at": time.time(), "done": False}
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-watch", daemon=True)

    def start(self) -> None:
        """Write the first heartbeat and start the thread."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()

    def watch_steps(self, first_step: int) -> None:
        """From now on this rank must finish a step every ``stall_timeout`` seconds."""
        self.beat.update(watched=self.stall_timeout > 0, first_step=first_step, step=first_step, step_at=time.time())
        self._wake.set()

    def step_finished(self) -> None:
        """Count one finished step (the thread writes it at once)."""
        self.beat.update(step=(self.beat["step"] or 0) + 1, step_at=time.time())
        self._wake.set()

    def stop(self) -> None:
        """The rank's work is done: record it and end the thread."""
        self.beat["done"] = True
        self._stopped.set()
        self._wake.set()
        self._thread.join(timeout=5)
        self._write()

    def _write(self) -> None:
        self.beat["alive_at"] = time.time()
        try:
            _write(self.path, json.dumps(self.beat) + "\n")
        except OSError as err:  # a full disk is reported by the job itself
            print(f"[progress] rank {self.rank}: could not write {self.path}: {err}", file=sys.stderr, flush=True)

    def _run(self) -> None:
        checked = time.monotonic()
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            self._write()
            if self.beat["watched"] and time.monotonic() - checked >= self.interval:
                checked = time.monotonic()
                stall = self._check()
                if stall is not None:
                    self._fail(stall)

    def _check(self) -> Stall | None:
        """Rank 0 judges every rank; another rank judges only when rank 0's watchdog is silent."""
        if self.rank != 0:
            zero = read_heartbeats(self.job_dir).get(0)
            if zero is None or not zero.get("watched") or zero.get("done") or not frozen(zero, time.time()):
                return None
        stall = silent_rank(read_heartbeats(self.job_dir))
        return stall if stall is not None and stall.silent_s > self.stall_timeout else None

    def _fail(self, stall: Stall) -> None:
        """Record the stall, then end this process (the executor ends the others)."""
        text = (f"stalled: {stall.describe()}; --stall_timeout {self.stall_timeout:g} s passed, "
                f"so rank {self.rank}'s watchdog ended the job (resubmit to resume from the last checkpoint)")
        try:
            _write(self.job_dir / "logs" / STALL_RECORD, json.dumps(
                {**asdict(stall), "since_utc": utc(stall.since), "detected_by": self.rank,
                 "detected_at": utc(time.time()), "message": text}, indent=2) + "\n", durable=True)
            _write(self.job_dir / "logs" / f"rank{self.rank}.traceback", text + "\n", durable=True)
        finally:
            print(f"[progress] {text}", file=sys.stderr, flush=True)
            os._exit(STALL_EXIT_CODE)


def start(job_dir: Path, rank: int, stall_timeout: float) -> Watch:
    """Start this rank's watchdog (one per process; :class:`cluster.runtime.RankTask` calls it)."""
    global _watch
    _watch = Watch(job_dir, rank, stall_timeout)
    _watch.start()
    return _watch


def stop() -> None:
    """Record that this rank's work is done and end its watchdog (no-op without one)."""
    if _watch is not None:
        _watch.stop()


def step_poll(first_step: int = 0) -> Callable[[], bool]:
    """The ``should_stop`` of a training loop that polls it after every optimizer step: each call
    records a finished step (``first_step`` is the step the run resumes at) in this rank's heartbeat,
    then says whether the scheduler asked the job to stop (:func:`cluster.preemption.stop_requested`).
    Outside a job (no watchdog) it only does the latter."""
    if _watch is not None:
        _watch.watch_steps(first_step)

    def should_stop() -> bool:
        if _watch is not None:
            _watch.step_finished()
        return preemption.stop_requested()

    return should_stop

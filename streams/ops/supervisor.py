"""``eddy up``: the whole system as supervised child processes, with a live status.

The supervisor starts the embedded broker (unless a bootstrap is configured),
creates the topics, and runs ``eddy worker``, ``eddy retrainer`` and ``eddy
exporter`` as child processes (and, for ``--demo``, ``eddy produce`` with a
drifting stream and delayed labels). Each child writes its log to
``<data dir>/logs/<name>.log`` and serves Prometheus metrics; the supervisor reads
those to draw its status, and writes ``<data dir>/up.json`` (children, pids,
ports, restarts) for other tools.

Contract: a child that exits while the system runs is reported with its exit
code and last log lines and restarted with exponential backoff (1 s doubling to
30 s; reset after a minute of good running). SIGTERM or SIGINT stops every child
with SIGTERM (they checkpoint and leave their groups), then SIGKILL after a grace
period, then the broker; children also die with the supervisor if it is killed
(``PR_SET_PDEATHSIG``), so nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from prometheus_client.parser import text_string_to_metric_families

from eddy.streams.kafka.broker import die_with_parent, free_port
from eddy.streams.observe.dashboard import Samples, samples_of
from eddy.streams.settings import Settings, settings_env

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that ran this long restarts with the first backoff again
STOP_GRACE_S = 20.0


@dataclass
class ChildSpec:
    """What to run: ``argv`` with ``env``; ``restart`` unless it is a one-shot job."""

    name: str
    argv: list[str]
    env: dict[str, str]
    metrics_port: int | None = None
    restart: bool = True
    after_ready: str | None = None  # start once this child answers as ready


@dataclass
class Child:
    """A supervised child process and its history."""

    spec: ChildSpec
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_FIRST_S
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)
    finished: bool = False  # a one-shot job that ended
    _log: IO[bytes] | None = None
    _terminated: bool = False

    @property
    def pid(self) -> int | None:
        """The running process's id, if one runs."""
        return self.process.pid if self.process and self.process.poll() is None else None

    def start(self) -> None:
        """Start (or restart) the process; its output goes to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open while it runs
        self.process = subprocess.Popen(
            self.spec.argv,
            env=self.spec.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Its own session: Ctrl-C in the terminal reaches the supervisor only,
            # which stops children in order; PDEATHSIG covers a killed supervisor.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self.started_at = time.monotonic()
        self.restart_at = None
        self._terminated = False

    def log_tail(self, lines: int = 8) -> str:
        """The last lines the child wrote."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def terminate(self) -> None:
        """Send SIGTERM once: a second one could land after the child's loop has
        removed its handler, and kill it mid-shutdown."""
        if self.process is not None and not self._terminated:
            self._terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; return the exit code."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.terminate()
            try:
                code = self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.spec.name, grace_s)
                self.process.kill()
                code = self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


class Supervisor:
    """Keeps children running; :meth:`step` is called periodically, :meth:`stop` once."""

    def __init__(
        self,
        children: list[Child],
        report: Callable[[str], None],
        about: dict[str, Any] | None = None,
    ) -> None:
        self.children = children
        self.report = report
        self.about = about or {}  # extra facts for up.json (bootstrap, broker pid)

    def start(self) -> None:
        """Start every child that waits for no other."""
        for child in self.children:
            if child.spec.after_ready is None:
                child.start()

    def start_waiting(self, ready: set[str]) -> None:
        """Start children whose ``after_ready`` child is in ``ready`` (once)."""
        for child in self.children:
            if child.process is None and child.spec.after_ready in ready:
                child.start()

    def step(self, now: float | None = None) -> None:
        """Notice exits; restart crashed children when their backoff is over."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.finished or (child.process is None and child.restart_at is None):
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restarts += 1
                    self.report(f"{child.spec.name}: restarting (restart {child.restarts})")
                    child.start()
                continue
            assert child.process is not None
            code = child.process.poll()
            if code is None:
                continue
            child.exit_codes.append(code)
            if not child.spec.restart:
                child.finished = True
                if code != 0:
                    self.report(
                        f"{child.spec.name} failed with exit code {code}:\n{child.log_tail()}"
                    )
                continue
            if now - child.started_at >= HEALTHY_AFTER_S:
                child.backoff_s = BACKOFF_FIRST_S
            self.report(
                f"{child.spec.name} exited with code {code} (pid {child.process.pid}); "
                f"restarting in {child.backoff_s:.0f} s. Last lines of {child.log_path}:\n"
                f"{child.log_tail()}"
            )
            child.restart_at = now + child.backoff_s
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)

    def stop(self) -> dict[str, int | None]:
        """Stop every child (all asked at once, then waited on); return exit codes."""
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.terminate()
        return {child.spec.name: child.stop() for child in self.children}

    def describe(self) -> dict[str, Any]:
        """What ``up.json`` holds."""
        return {
            "supervisor_pid": os.getpid(),
            **self.about,
            "children": {
                c.spec.name: {
                    "pid": c.pid,
                    "metrics_port": c.spec.metrics_port,
                    "restarts": c.restarts,
                    "exit_codes": c.exit_codes,
                    "log": str(c.log_path),
                }
                for c in self.children
            },
        }


def write_status_file(path: Path, content: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``content`` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2))
    tmp.replace(path)


def scrape(port: int | None, timeout_s: float = 0.5) -> Samples | None:
    """Read a child's ``/metrics``; ``None`` if it does not answer (yet)."""
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return None
    return samples_of(text_string_to_metric_families(text))


def port_or_free(preferred: int) -> int:
    """``preferred`` if nothing listens there, else a free port the OS picks."""
    with socket.socket() as s:
        # As the HTTP server will: a port in TIME_WAIT from an earlier run is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def child_specs(
    settings: Settings,
    base_port: int,
    demo: dict[str, Any] | None,
    config: Path | None = None,
) -> list[ChildSpec]:
    """The children of ``eddy up``: worker, retrainer, exporter (and the demo producer);
    each loads ``config`` (the streams and their models) when one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= settings_env(settings)
    env["PYTHONUNBUFFERED"] = "1"
    specs = []
    with_config = ["--config", str(config.resolve())] if config is not None else []
    for offset, name in enumerate(("worker", "retrainer", "exporter")):
        port = port_or_free(base_port + offset)
        env_port = env | {"EDDY_METRICS_PORT": str(port)}
        specs.append(ChildSpec(name, eddy_argv(name, *with_config), env_port, port))
    if demo is not None:
        n = int(demo["n"])
        args = [
            "produce",
            "--dataset",
            "sea",
            "--n",
            str(n),
            "--seed",
            str(demo.get("seed", 7)),
            # SEA's threshold moves from 7 to 9.5 (29% of labels change): ADWIN finds it
            # within a few dozen examples even when load reorders samples and late labels.
            # 0 -> 3 (17%) went unseen in about one run in five on a loaded machine.
            "--variant",
            "2",
            "--drift-at",
            str(n // 2),
            "--drift-to",
            "3",
            "--label-delay",
            "500",
            "--label-drop",
            "0.01",
            "--rate",
            str(demo["rate"]),
            "--no-progress",
        ]
        # After the worker is ready, so that the demo is learned live, not as a backlog.
        specs.append(
            ChildSpec("producer", eddy_argv(*args), env, None, restart=False, after_ready="worker")
        )
    return specs


def eddy_argv(*args: str) -> list[str]:
    """The command line of ``eddy <args>`` in this interpreter."""
    return [sys.executable, "-m", "eddy.streams.ops.cli", *args]


def reset_stream_state(data_dir: Path, everything: bool) -> list[Path]:
    """Remove checkpoints and consumer state (and with ``everything``, the registry).

    A memory-only embedded broker starts empty, so offsets saved against the last
    one describe topics that no longer exist; the registry stays unless asked.
    """
    names = ["checkpoints", "consumers"] + (["registry", "logs"] if everything else [])
    removed = []
    for name in names:
        path = data_dir / name
        if path.exists():
            shutil.rmtree(path)
            removed.append(path)
    return removed


@contextlib.contextmanager
def stop_signals() -> Any:
    """Turn SIGTERM/SIGINT into a flag (a list that gets the signal number)."""
    received: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum))
        for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

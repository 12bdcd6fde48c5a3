"""The supervisor's contract with plain child processes (no broker needed)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from eddy.streams.ops.supervisor import Child, ChildSpec, Supervisor
from tests.integration.worker_helpers import holds_within


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def make(tmp_path: Path, name: str, code: str, restart: bool = True) -> Child:
    spec = ChildSpec(name, python(code), dict(os.environ), restart=restart)
    return Child(spec, tmp_path / f"{name}.log")


def test_a_crashed_child_is_reported_and_restarted_with_growing_backoff(tmp_path: Path) -> None:
    child = make(tmp_path, "crashy", "print('about to fail', flush=True); raise SystemExit(3)")
    reports: list[str] = []
    supervisor = Supervisor([child], reports.append)
    supervisor.start()
    assert holds_within(lambda: child.process is not None and child.process.poll() is not None, 30)
    supervisor.step()
    assert child.exit_codes == [3] and child.restart_at is not None
    assert "crashy exited with code 3" in reports[0] and "restarting in 1 s" in reports[0]
    assert "about to fail" in reports[0]  # its last log lines come with the report
    supervisor.step(now=child.restart_at)  # the backoff is over: it runs again
    assert child.restarts == 1
    assert holds_within(lambda: child.process is not None and child.process.poll() is not None, 30)
    supervisor.step()
    assert "restarting in 2 s" in reports[-1]  # doubled
    supervisor.stop()


def test_a_one_shot_job_is_not_restarted(tmp_path: Path) -> None:
    job = make(tmp_path, "job", "pass", restart=False)
    supervisor = Supervisor([job], lambda message: None)
    supervisor.start()
    assert holds_within(lambda: job.process is not None and job.process.poll() is not None, 30)
    supervisor.step()
    assert job.finished and job.exit_codes == [0] and job.restarts == 0


def test_stop_sends_sigterm_once_and_kills_what_ignores_it(tmp_path: Path) -> None:
    polite = make(
        tmp_path,
        "polite",
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "print('ready', flush=True)\ntime.sleep(60)",
    )
    stubborn = make(
        tmp_path,
        "stubborn",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)",
    )
    supervisor = Supervisor([polite, stubborn], lambda message: None)
    supervisor.start()
    for child in (polite, stubborn):
        assert holds_within(lambda c=child: "ready" in c.log_tail(), 30)
    started = time.monotonic()
    stubborn_code = stubborn.stop(grace_s=1.0)
    assert stubborn_code == -9 and time.monotonic() - started < 10
    assert supervisor.stop() == {"polite": 0, "stubborn": -9}

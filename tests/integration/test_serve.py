"""``eddy serve`` against the embedded broker, called by clients nobody here wrote: Triton's
``tritonclient[http]`` and plain ``curl``.

One ``eddy serve`` process with an empty data directory (everything comes over Kafka),
a bearer token and tight limits; a worker, retrainer and exporter in this process. In
order: 503 before anything is ready, 401 without the token; the online model served, its
predictions equal to the learner's own for the same inputs (tritonclient binary and JSON,
curl per feature and as a matrix); 400s in the protocol's error shape; then a request load
while the online model is re-published and a retrain is exported: no request lost, the
champion served after the export (equal to the int8 model's own), the online model in
shadow; SIGTERM stops it cleanly. A second test starts it with ``eddy up --serve``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from eddy.consumers.exporter import Exporter
from eddy.consumers.hotswap import HotSwapClient
from eddy.consumers.retrainer import Retrainer
from eddy.streams.kafka.admin import create_topics
from eddy.streams.kafka.clients import start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.ops import sources
from eddy.streams.ops.producer import ProduceOptions, produce
from eddy.streams.ops.supervisor import eddy_argv
from eddy.streams.settings import settings_env
from eddy.streams.wire.codec import make_event
from tests.integration.worker_helpers import (
    learned,
    running_consumer,
    running_worker,
    wait_for,
)

pytestmark = pytest.mark.integration

KEY = "serve-test-key"
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # copied per call: tritonclient adds to it
ROWS = [
    {"0": 5.0, "1": 4.2, "2": 1.0},
    {"0": 1.0, "1": 1.0, "2": 9.0},
    {"0": 8.5, "1": 2.5, "2": 3.0},
    {"0": 0.5, "1": 9.5, "2": 7.0},
]
FEATURES = ("0", "1", "2")
INFER = "/v2/models/default/infer"


class Served:
    """A running ``eddy serve`` process."""

    def __init__(self, settings: Any, data_dir: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
        env |= settings_env(settings.with_overrides({"data_dir": data_dir}))
        env |= {
            "EDDY_SERVE_PORT": "0",  # a free port, written to serve.json
            "EDDY_SERVE_TOKEN": TOKEN,
            "EDDY_SERVE_MAX_BATCH": "64",
            "EDDY_SERVE_MAX_BODY_BYTES": "65536",
            "PYTHONUNBUFFERED": "1",
        }
        self.log = log
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            eddy_argv("serve"), env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while not (data_dir / "serve.json").exists():
            assert self.process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        self.url = json.loads((data_dir / "serve.json").read_text())["url"]
        self.host = self.url.removeprefix("http://")

    def curl(self, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        """``curl`` the path (POST with a JSON body); (status, parsed JSON body)."""
        command = [
            "curl",
            "--noproxy",
            "*",
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            self.url + path,
        ]
        if token is not None:
            command += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            command += ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@-"]
        else:
            data = None
        out = subprocess.run(command, input=data, capture_output=True, check=True, timeout=30)
        text, _, status = out.stdout.decode().rpartition("\n")
        return int(status), json.loads(text) if text else None

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(40)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def curl_infer(rows: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    inputs = [
        {"name": f, "shape": [len(rows)], "datatype": "FP64", "data": [r[f] for r in rows]}
        for f in FEATURES
    ]
    return {"inputs": inputs, **extra}


def triton_infer(
    host: str, rows: list[dict[str, float]], version: str = "", binary: bool = True
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """One inference with Triton's client (made in the calling thread: it is gevent's)."""
    client = triton.InferenceServerClient(host)
    try:
        inputs = []
        for f in FEATURES:
            tensor = triton.InferInput(f, [len(rows)], "FP64")
            tensor.set_data_from_numpy(np.array([r[f] for r in rows]), binary_data=binary)
            inputs.append(tensor)
        outputs = None
        if not binary:
            outputs = [
                triton.InferRequestedOutput(name, binary_data=False)
                for name in ("predict", "predict_proba")
            ]
        result = client.infer(
            "default", inputs, model_version=version, outputs=outputs, headers=dict(AUTH)
        )
        return result.get_response(), result.as_numpy("predict"), result.as_numpy("predict_proba")
    finally:
        client.close()


def own(learner: Any, rows: list[dict[str, float]]) -> tuple[list[Any], list[list[float]]]:
    """What a model predicts itself: labels, and probabilities in [false, true] order."""
    predictions = learner(rows)
    return [p.value for p in predictions], [[p.proba[False], p.proba[True]] for p in predictions]


class Load:
    """Requests from a thread, back to back, until stopped; every outcome kept."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.outcomes: list[tuple[str, str]] = []  # ("ok", version) or ("error", why)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        client = triton.InferenceServerClient(self.host, connection_timeout=10)
        inputs = []
        for f in FEATURES:
            tensor = triton.InferInput(f, [len(ROWS)], "FP64")
            tensor.set_data_from_numpy(np.array([r[f] for r in ROWS]))
            inputs.append(tensor)
        try:
            while not self._stop.is_set():
                try:
                    result = client.infer("default", inputs, headers=dict(AUTH))
                    answer = result.as_numpy("predict")
                    ok = answer is not None and len(answer) == len(ROWS)
                    version = result.get_response()["model_version"]
                    self.outcomes.append(("ok", version) if ok else ("error", "short answer"))
                except (InferenceServerException, OSError) as ex:
                    self.outcomes.append(("error", repr(ex)))
                time.sleep(0.005)
        finally:
            client.close()


async def request_retrain(settings: Any, last_n: int) -> None:
    """What ``eddy retrain --stream default --last-n N`` sends, signed with the key."""
    event = make_event(
        "retrain.requested",
        "eddy/test",
        {"stream": "default", "reason": "manual", "window": {"last_n": last_n}},
        subject="default",
        signing_key=KEY.encode(),
    )
    producer = await start_producer(settings.kafka)
    try:
        await producer.send_and_wait(Topics(settings.topics.prefix).events, orjson.dumps(event))
    finally:
        await producer.stop()


@pytest.mark.timeout(900)
def test_serve_with_tritonclient_and_curl(settings, tmp_path):
    settings = settings.with_overrides(
        {
            "topic_prefix": settings.topics.prefix + "sv.",
            "partitions": 1,
            "signing_key": KEY,
            "snapshot_interval_s": 1.0,
            "retrain_epochs": 3,
            "retrain_folds": 2,
            "retrain_trials": 0,
            # the batch model's own int8 (256x256: about 3.8x smaller, passing the gate);
            # a tiny network's int8 is larger than its fp32 and would not be servable
            "export_distill": False,
            "export_ladder": (0.0,),
            "retrain_min_examples": 500,
        }
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    served = Served(settings, tmp_path / "serve-empty", tmp_path / "serve.log")
    try:
        _scenario(settings, served, tmp_path)
        children = subprocess.run(
            ["ps", "--ppid", str(served.process.pid), "-o", "pid="],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert children == [], children  # eddy serve starts no process of its own
        assert served.stop() == 0, served.log.read_text()[-3000:]
    finally:
        served.kill()
    log = served.log.read_text()
    assert "stopped cleanly" in log
    assert "Traceback" not in log, log[-3000:]
    assert not (served.data_dir / "serve.json").exists()


def _scenario(settings: Any, served: Served, tmp_path: Path) -> None:
    # Before anything is there: live, not ready (with the reason); the token is needed.
    assert served.curl("/v2/health/live", token=None) == (200, {"live": True})
    status, body = served.curl("/v2/health/ready", token=None)
    assert status == 503 and set(body) == {"error", "ready"}, body
    assert served.curl("/v2", token=None)[0] == 401
    status, body = served.curl("/v2/models/default/infer", curl_infer(ROWS), token="wrong")
    assert status == 401 and "bearer token" in body["error"]
    status, body = served.curl("/v2")
    assert status == 200 and body["name"] == "eddy" and "binary_tensor_data" in body["extensions"]

    async def learn_then_serve() -> None:
        stream = itertools.islice(sources.open_named("sea", seed=3), 3000)
        async with running_worker(settings) as worker:
            await produce(
                settings.kafka,
                settings.topics.prefix,
                stream,
                ProduceOptions(n=3000, inline_labels=True),
            )
            await wait_for(lambda: learned(worker) == 3000, 120, "learned")

            def version() -> str | None:
                status, body = served.curl("/v2/models/default/versions/online/ready")
                return body.get("version") if status == 200 else None

            await wait_for(
                lambda: (version() or "").endswith("@3000"), 60, "the online model served"
            )
            learner = worker.stream("default").learner.predict_many
            await asyncio.to_thread(_online_model_served, served, learner)

    asyncio.run(learn_then_serve())
    _bad_requests(served)
    asyncio.run(_swaps_under_load(settings, served, tmp_path))


def _online_model_served(served: Served, learner: Any) -> None:
    labels, probabilities = own(learner, ROWS)
    assert served.curl("/v2/health/ready", token=None) == (200, {"ready": True})
    # tritonclient, binary tensors (its default) and JSON ones
    for binary in (True, False):
        response, predict, proba = triton_infer(served.host, ROWS, binary=binary)
        assert response["model_name"] == "default"
        assert (
            response["model_version"].startswith("online-") and "@3000" in response["model_version"]
        )
        assert predict.tolist() == labels
        assert proba.tolist() == probabilities  # exactly: FP64 end to end
    # curl, one input per feature, then the same rows as one matrix in metadata order
    status, body = served.curl(
        "/v2/models/default/versions/online/infer", curl_infer(ROWS, id="c1")
    )
    assert status == 200 and body["id"] == "c1"
    predict, proba = body["outputs"]
    assert predict == {"name": "predict", "datatype": "BOOL", "shape": [4], "data": labels}
    assert proba["shape"] == [4, 2] and json.loads(proba["parameters"]["classes"]) == [False, True]
    assert np.array(proba["data"]).reshape(4, 2).tolist() == probabilities
    status, metadata = served.curl("/v2/models/default")
    assert status == 200 and metadata["platform"] == "eddy_online"
    order = json.loads(metadata["parameters"]["feature_order"])
    assert sorted(order) == sorted(FEATURES)
    assert [i["name"] for i in metadata["inputs"]] == order
    matrix = {
        "inputs": [
            {
                "name": "features",
                "shape": [4, 3],
                "datatype": "FP32",
                "data": [[r[f] for f in order] for r in ROWS],
            }
        ]
    }
    status, body = served.curl("/v2/models/default/infer", matrix)
    assert status == 200 and body["outputs"][0]["data"] == labels  # these values fit FP32
    # no champion yet: the champion's path answers 503 with the reason
    status, body = served.curl("/v2/models/default/versions/champion/infer", curl_infer(ROWS))
    assert status == 503 and "no champion" in body["error"], body


def one(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def _bad_requests(served: Served) -> None:
    path = "/v2/models/default/infer"
    cases = [
        (b"{not json", 400, "not JSON"),
        ({"inputs": []}, 400, "non-empty array"),
        ({"inputs": [{"name": "0", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, 400, "2"),
        ({"inputs": [{"name": "0", "shape": [1], "datatype": "FP99", "data": [1.0]}]}, 400, "FP99"),
        (
            {"inputs": [{"name": "0", "shape": [1], "datatype": "FP64", "data": ["x"]}]},
            400,
            "numbers",
        ),
        (curl_infer(ROWS * 17), 400, "at most 64"),
        (curl_infer(ROWS, outputs=[{"name": "nope"}]), 400, "no output 'nope'"),
        (b" " * 70_000, 413, "over 65536 bytes"),
    ]
    for body, status, words in cases:
        got, answer = served.curl(path, body)
        assert got == status, (body if isinstance(body, dict) else body[:20], answer)
        assert list(answer) == ["error"] and words in answer["error"], answer
        assert "Traceback" not in answer["error"]
    assert served.curl("/v2/models/ghost/infer", curl_infer(ROWS))[0] == 404
    assert served.curl("/v2/models/default/versions/v0042/infer", curl_infer(ROWS))[0] == 404
    status, answer = served.curl("/v2/models/default/infer")  # GET
    assert status == 405 and list(answer) == ["error"]


async def _swaps_under_load(settings: Any, served: Served, tmp_path: Path) -> None:
    """Requests back to back while the online model is re-published and a retrain is
    exported: every one answered; the champion served after the export."""
    more = itertools.islice(sources.open_named("sea", seed=5), 3000)
    async with (
        running_worker(settings) as worker,
        running_consumer(settings, Retrainer),
        running_consumer(settings, Exporter),
    ):
        with Load(served.host) as load:
            await wait_for(lambda: len(load.outcomes) >= 20, 60, "the load running")
            await produce(
                settings.kafka,
                settings.topics.prefix,
                more,
                ProduceOptions(n=3000, inline_labels=True, rate=1500),
            )
            await wait_for(lambda: learned(worker) == 6000, 120, "learned")
            await request_retrain(settings, last_n=4000)

            def champion() -> str | None:
                ok = [v for kind, v in load.outcomes if kind == "ok"]
                return ok[-1] if ok and not ok[-1].startswith("online-") else None

            await wait_for(lambda: champion() is not None, 300, "the champion served under load")
            n = len(load.outcomes)
            await wait_for(lambda: len(load.outcomes) >= n + 20, 60, "more requests after it")
    errors = [why for kind, why in load.outcomes if kind == "error"]
    versions = list(dict.fromkeys(v for kind, v in load.outcomes if kind == "ok"))
    print(f"load: {len(load.outcomes)} requests, versions served in turn: {versions}")
    assert errors == [], errors[:5]
    assert len(versions) >= 3, versions  # online snapshots swapped, then the champion
    assert versions[-1] == "v0001", versions
    # the champion's answer equals the int8 model's own (a hot-swap client's, elsewhere)
    client = HotSwapClient(
        settings.kafka,
        "default",
        prefix=settings.topics.prefix,
        data_dir=tmp_path / "reference",
        signing_key=KEY,
        follow="champion",
    )
    await client.start()
    try:
        await wait_for(lambda: client.version == "v0001", 60, "the reference champion")
        reference = client.current("champion")
        assert reference is not None
        labels, probabilities = own(reference.infer, ROWS)
    finally:
        await client.stop()
    for version in ("", "v0001", "champion"):
        response, predict, proba = await asyncio.to_thread(triton_infer, served.host, ROWS, version)
        assert response["model_version"] == "v0001"
        assert predict.tolist() == labels and proba.tolist() == probabilities
    status, metadata = served.curl("/v2/models/default/versions/champion")
    assert status == 200 and metadata["platform"] == "onnxruntime_onnx"
    assert metadata["parameters"]["features_from"] == "champion"
    # the online model stays in shadow: scored beside the champion on every request
    metrics = await asyncio.to_thread(scrape_metrics, served)
    shadow = [
        line
        for line in metrics.splitlines()
        if line.startswith('eddy_serve_shadow_rows_total{model="default",outcome="agree"}')
    ]
    assert shadow and float(shadow[0].split()[-1]) > 0, metrics[-3000:]
    assert 'eddy_serve_requests_total{model="default",version="v0001"}' in metrics
    assert 'eddy_serve_errors_total{model="default",reason="bad_request"' in metrics


def scrape_metrics(served: Served) -> str:
    command = [
        "curl",
        "--noproxy",
        "*",
        "-sS",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        served.url + "/metrics",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


@pytest.mark.timeout(600)
def test_eddy_up_serve(tmp_path):
    """``eddy up --demo --serve``: the server runs as a supervised child, answers with the
    online model, and stops with everything else."""
    data_dir = tmp_path / "eddy-data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= {"EDDY_SERVE_PORT": "0", "EDDY_SESSION_TIMEOUT_MS": "6000", "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "up.out"
    argv = eddy_argv(
        "up", "--demo", "--serve", "--n", "4000", "--rate", "1000", "--partitions", "1"
    )
    argv += ["--data-dir", str(data_dir)]
    with out.open("wb") as sink:
        up = subprocess.Popen(argv, env=env, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 90
        while not (data_dir / "serve.json").exists():
            assert up.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, out.read_text()[-3000:]
            time.sleep(0.2)
        url = json.loads((data_dir / "serve.json").read_text())["url"]
        body = json.dumps(curl_infer(ROWS[:1])).encode()

        def infer() -> tuple[int, Any]:
            answer = subprocess.run(
                [
                    "curl",
                    "--noproxy",
                    "*",
                    "-sS",
                    "-w",
                    "\n%{http_code}",
                    "--data-binary",
                    "@-",
                    url + INFER,
                ],
                input=body,
                capture_output=True,
                check=True,
            ).stdout.decode()
            text, _, status = answer.rpartition("\n")
            return int(status), json.loads(text) if text else None

        deadline = time.monotonic() + 120
        while (answer := infer())[0] != 200:
            assert up.poll() is None, out.read_text()[-3000:]
            assert time.monotonic() < deadline, (answer, out.read_text()[-3000:])
            time.sleep(0.5)
        assert answer[1]["model_version"].startswith("online-")
        status = json.loads((data_dir / "up.json").read_text())
        pid = status["children"]["serve"]["pid"]
        up.send_signal(signal.SIGTERM)
        assert up.wait(90) == 0, out.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    text = out.read_text()
    assert "'serve': 0" in text, text[-2000:]
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert not (data_dir / "serve.json").exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-s"]))

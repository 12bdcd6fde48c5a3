"""eddy as a library, as a user's project has it: an installed wheel beside the user's own
``models/`` package, and ``eddy up --config`` running a model from the user's module."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from pathlib import Path

import orjson
import pytest

from eddy.streams.kafka.broker import EmbeddedBroker
from eddy.streams.kafka.clients import make_consumer, read_records
from eddy.streams.settings import KafkaConfig

ROOT = Path(__file__).resolve().parents[2]

USER_MODELS = {
    # The user's own top-level `models` package: eddy must not shadow it, nor be shadowed.
    "models/__init__.py": "",
    "models/fraud.py": """
        from river import linear_model, preprocessing

        def card_model():
            return preprocessing.StandardScaler() | linear_model.LogisticRegression()
    """,
}

SKETCH = """
    import os, sys

    import eddy
    from river import drift
    from models.fraud import card_model  # the user's package, beside the installed eddy

    assert os.path.realpath(eddy.__file__).startswith(os.path.realpath(sys.argv[1])), eddy.__file__
    app = eddy.App(eddy.KafkaConfig(os.environ["BOOTSTRAP"]), prefix=os.environ["PREFIX"])
    app.stream("cards", model=card_model(), task="binary", detector=drift.ADWIN(delta=0.001))
    app.stream("merchants", model="hoeffding")

    @app.on_prediction
    def served(prediction):
        print("served", prediction["stream"], flush=True)

    app.run()
"""


async def _topics(bootstrap: str) -> set[str]:
    consumer = make_consumer(KafkaConfig(bootstrap), "test", enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.topics()
    finally:
        await consumer.stop()


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    return next(out.glob("eddy-*.whl"))


def test_the_wheel_installs_one_eddy_package_and_nothing_else_at_the_top(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"eddy"}, tops
    names = set(zipfile.ZipFile(wheel).namelist())
    for part in (
        "eddy/py.typed",
        "eddy/schemas/sample.json",
        "eddy/streams/observe/dashboard.html",
    ):
        assert part in names
    # The compiled modules, built by the wheel's own build (setup.py).
    for module in ("eddy/models/kernels/_linear.", "eddy/models/kernels/_columns."):
        assert any(n.startswith(module) and n.endswith(".so") for n in names), module


def test_a_project_with_its_own_models_package_runs_the_sketch(
    wheel: Path, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    site, project = tmp_path / "site", tmp_path / "project"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    _write(project, {**USER_MODELS, "app.py": SKETCH})
    prefix = f"lib{uuid.uuid4().hex[:6]}."
    # The wheel's eddy, then the user's project; the dependencies from this interpreter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env |= {
        "PYTHONPATH": f"{site}{os.pathsep}{project}",
        "BOOTSTRAP": broker.bootstrap,
        "PREFIX": prefix,
        "EDDY_PRODUCER_IDEMPOTENCE": "off",
        "EDDY_DATA_DIR": str(tmp_path / "data"),
        "EDDY_METRICS_PORT": "0",
    }
    app = subprocess.Popen(
        [sys.executable, "app.py", str(site)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Its precondition: the app has created its topics (App.run does, on start).
        deadline = time.monotonic() + 60
        while f"{prefix}samples" not in asyncio.run(_topics(broker.bootstrap)):
            assert app.poll() is None, app.communicate()[0]
            assert time.monotonic() < deadline, "the app did not create its topics in 60 s"
            time.sleep(0.2)
        produce = [sys.executable, "-m", "eddy.streams.ops.cli", "produce", "--dataset", "sea"]
        produce += ["--bootstrap", broker.bootstrap, "--topic-prefix", prefix, "--no-progress"]
        produce += ["--producer-idempotence", "off", "--n", "300"]
        for stream in ("cards", "merchants"):
            subprocess.run(
                [*produce, "--stream", stream], env=env, check=True, timeout=120, cwd=tmp_path
            )
        kafka = KafkaConfig(broker.bootstrap)
        deadline = time.monotonic() + 120
        while True:
            records = asyncio.run(read_records(kafka, f"{prefix}examples"))
            learned = {orjson.loads(r.value)["stream"] for r in records}
            if learned == {"cards", "merchants"} and len(records) == 600:
                break
            assert app.poll() is None, app.communicate()[0]
            assert time.monotonic() < deadline, f"learned {len(records)} of 600: {learned}"
            time.sleep(0.5)
        predictions = asyncio.run(read_records(kafka, f"{prefix}predictions"))
        assert len(predictions) == 600
    finally:
        app.send_signal(signal.SIGTERM)
        try:
            output = app.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            app.kill()  # leave no process behind, then fail
            output = app.communicate()[0]
            pytest.fail(f"the app did not stop within 60 s of SIGTERM:\n{output[-3000:]}")
    assert app.returncode == 0, output
    assert output.count("served cards") == 300 and output.count("served merchants") == 300


def test_eddy_up_config_runs_a_model_from_the_users_own_module(tmp_path: Path) -> None:
    project = tmp_path / "project"
    marker = tmp_path / "factory-called"
    _write(
        project,
        {
            "usermodels/__init__.py": "",
            "usermodels/sea.py": f"""
                from pathlib import Path
                from river import linear_model, optim, preprocessing

                def build():
                    Path({str(marker)!r}).write_text("called")
                    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
                        optimizer=optim.SGD(0.05)
                    )
            """,
            "eddy.toml": """
                [learning]
                drift_min_examples = 1000000   # this test is about the model, not maintenance

                [streams.default]
                model = "usermodels.sea:build"
                task = "binary"
                detector = "adwin"
                metrics = ["accuracy", "log_loss"]
            """,
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDDY_")}
    env["PYTHONPATH"] = str(project)
    data_dir = tmp_path / "data"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "eddy.streams.ops.cli",
            "up",
            "--config",
            "eddy.toml",
            "--demo",
            "--exit-when-done",
            "--fresh",
            "--n",
            "3000",
            "--rate",
            "3000",
            "--timeout",
            "240",
            "--data-dir",
            str(data_dir),
            "--partitions",
            "1",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    worker_log = (data_dir / "logs" / "worker.log").read_text()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker_log[-3000:]
    assert marker.read_text() == "called"
    # The worker built the stream from the config's table, with the user's pipeline.
    assert "new stream 'default' (StandardScaler | LogisticRegression, binary)" in worker_log

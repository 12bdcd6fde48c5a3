"""Security: TLS/SASL reach every Kafka client; events and registry records are signed,
replays refused; serving follows the registry, not events; pickles are authenticated."""

from __future__ import annotations

import asyncio
import pickle
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from eddy.consumers.control import Replayed
from eddy.consumers.exporter import Exporter
from eddy.consumers.hotswap import HotSwapClient
from eddy.models.sealed import MAGIC
from eddy.streams.exceptions import BadSignature, UnsignedEvent
from eddy.streams.kafka.clients import client_options, make_consumer, start_producer
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import Settings
from eddy.streams.state.registry_topic import KafkaRegistry, RegistryFold, sign
from eddy.streams.wire.codec import decode_event, event_signature, make_event
from tests.integration.worker_helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
KEY = "s3cret-signing-key"
EXPORTED = {
    "model": "default",
    "version": "v0002",
    "artifact": {
        "uri": "default/v0002/model.int8.onnx",
        "sha256": "ab" * 32,
        "size_bytes": 1000,
        "format": "onnx-int8",
    },
    "servable": True,
    "report": {},
}


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA/cert/key made with openssl, for the TLS options."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=eddy-test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, cert, key


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_options_reach_consumers_and_admin_clients(
    tls_files: tuple[Path, Path, Path], mechanism: str
) -> None:
    ca, cert, key = tls_files
    settings = Settings.build(
        bootstrap="kafka.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="eddy",
        sasl_password="pw",
        ssl_cafile=ca,
        ssl_certfile=cert,
        ssl_keyfile=key,
        signing_key=KEY,
    )
    options = client_options(settings.kafka, "worker")
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("eddy", "pw")
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"

    # Real client objects (built in a loop, not started: no broker speaks TLS here).
    async def build() -> tuple[object, object]:
        consumer = make_consumer(settings.kafka, "worker")
        admin = AIOKafkaAdminClient(**client_options(settings.kafka, "admin"))
        return consumer._client, admin._client

    for client in asyncio.run(build()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == mechanism
        assert client._sasl_plain_username == "eddy"
        assert client._ssl_context is not None
    # Secrets stay out of logs, reprs and `eddy config`.
    for shown in (str(settings.redacted()), repr(settings), repr(settings.kafka), str(settings)):
        assert "pw" not in shown.replace("pwd", "") and KEY not in shown


def test_sasl_without_credentials_is_a_clear_error() -> None:
    from eddy.streams.exceptions import ConfigError

    with pytest.raises(ConfigError, match="EDDY_SASL_USERNAME"):
        Settings.build(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")


def test_every_kafka_client_is_built_from_client_options() -> None:
    """No module builds an aiokafka client by hand, so no client can miss TLS/SASL."""
    offenders = []
    for path in [*REPO.glob("streams/**/*.py"), *REPO.glob("consumers/**/*.py")]:
        if path == REPO / "streams/kafka/clients.py":
            continue
        text = path.read_text()
        if re.search(r"AIOKafka(Consumer|Producer|AdminClient)\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders
    kafka = (REPO / "streams/kafka/clients.py").read_text()
    for constructor in ("AIOKafkaProducer(", "AIOKafkaConsumer(", "AIOKafkaAdminClient("):
        for call in re.findall(re.escape(constructor) + r"[^)]*\)", kafka):
            assert "**options" in call, call


def test_signed_events_verify_and_anything_else_is_refused() -> None:
    key = KEY.encode()
    event = make_event("model.exported", "eddy/t", EXPORTED, subject="default", signing_key=key)
    assert decode_event(orjson.dumps(event), signing_key=key).id == event["id"]
    unsigned = {k: v for k, v in event.items() if k != "eddysig"}
    with pytest.raises(UnsignedEvent):
        decode_event(orjson.dumps(unsigned), signing_key=key)
    tampered = event | {"data": EXPORTED | {"version": "v0666"}}
    with pytest.raises(BadSignature):
        decode_event(orjson.dumps(tampered), signing_key=key)
    with pytest.raises(BadSignature):
        decode_event(orjson.dumps(event), signing_key=b"another key")
    # The signature covers the sequence number: it cannot be bumped to look new.
    bumped = event | {"eddyseq": event["eddyseq"] + 10**12}
    with pytest.raises(BadSignature):
        decode_event(orjson.dumps(bumped), signing_key=key)
    # Re-signing the tampered event needs the key: with it, it verifies.
    resigned = tampered | {"eddysig": event_signature(tampered, key)}
    assert decode_event(orjson.dumps(resigned), signing_key=key).data["version"] == "v0666"


def _record(value: bytes) -> SimpleNamespace:
    return SimpleNamespace(
        topic="eddy.events", partition=0, offset=0, timestamp=0, key=b"k", value=value, headers=()
    )


def test_control_consumers_refuse_unsigned_and_replayed_events(tmp_path: Path) -> None:
    settings = Settings.build(data_dir=tmp_path, signing_key=KEY, bootstrap="127.0.0.1:1")
    exporter = Exporter(settings, producer=None)
    key = KEY.encode()
    unsigned = make_event(
        "model.updated",
        "eddy/t",
        {
            "model": "m",
            "version": "v0001",
            "parent_version": None,
            "card": "c",
            "promoted": True,
            "metrics": {},
        },
        subject="m",
    )
    newer = dict(unsigned, id="newer", eddyseq=unsigned["eddyseq"] + 5)
    newer["eddysig"] = event_signature(newer, key)
    older = dict(unsigned, id="older")  # a replay of an older event: lower sequence
    older["eddysig"] = event_signature(older, key)

    reached: list[str] = []

    async def handle(event) -> None:
        reached.append(event.id)

    async def feed() -> None:
        exporter.handle = handle  # type: ignore[method-assign]
        for event in (unsigned, newer, older):
            await exporter._one(_record(orjson.dumps(event)))

    asyncio.run(feed())
    handled = exporter.metrics.handled
    assert reached == ["newer"]
    assert handled.labels("exporter", "unknown", "unsigned")._value.get() == 1
    assert handled.labels("exporter", "unknown", Replayed.reason)._value.get() == 1


def test_the_registry_fold_refuses_forged_and_replayed_records() -> None:
    key = KEY.encode()
    fold = RegistryFold(key)
    records = [
        ("aliases/m", sign({"model": "m", "aliases": {"champion": "v0001"}, "seq": 10}, key)),
        ("aliases/m", {"model": "m", "aliases": {"champion": "v0002"}, "seq": 99}),  # unsigned
        ("aliases/m", sign({"model": "m", "aliases": {"champion": "v0002"}, "seq": 5}, key)),  # old
        ("card/m/v0009", {"model": "m", "version": "v0009", "artifacts": {}}),  # forged card
    ]
    for offset, (k, value) in enumerate(records):
        fold.apply(SimpleNamespace(offset=offset, key=k.encode(), value=orjson.dumps(value)))
    assert fold.aliases["m"]["aliases"] == {"champion": "v0001"}
    assert ("m", "v0009") not in fold.cards
    assert fold.refused == 3


def test_serving_follows_the_registry_not_forged_or_replayed_events(settings, tmp_path) -> None:
    """With and without a key, an event cannot move what serving code serves: the client
    serves what the registry's champion alias points to (verified)."""
    from eddy.models.maintain.batch import TrainParams, train, vectorize
    from eddy.models.maintain.export import quantize_int8, to_onnx
    from eddy.streams.ops import sources

    settings = settings.with_overrides({"signing_key": KEY})
    data = list(__import__("itertools").islice(sources.open_named("sea", seed=1), 600))
    matrix, names = vectorize([x for x, _ in data])
    model = train(matrix, [y for _, y in data], "binary", names, TrainParams(hidden=(8,), epochs=2))
    fp32 = to_onnx(model)
    int8 = quantize_int8(fp32)
    key = KEY.encode()

    async def scenario() -> tuple[list[str], list[str]]:
        async with KafkaRegistry.open(
            settings.kafka, settings.topics.prefix, settings.data_dir / "registry", key
        ) as registry:
            artifacts = {"model.pt": model.to_bytes(), "model.int8.onnx": int8}
            passed = {"export_gate": {"passed": True, "reason": "ok"}, "parent_version": None}
            failed = {
                "export_gate": {"passed": False, "reason": "accuracy"},
                "parent_version": "v0001",
            }
            await registry.register("default", passed, artifacts)
            await registry.register("default", failed, artifacts)
            await registry.set_alias("default", "champion", "v0001")
            client = HotSwapClient.from_settings(
                settings.with_overrides({"data_dir": tmp_path / "serving"}), "default"
            )
            await client.start()
            try:
                await wait_for(lambda: client.version == "v0001", 30, "v0001 served")
                producer = await start_producer(settings.kafka)
                events = Topics(settings.topics.prefix).events
                forged = make_event(
                    "model.rolled_back",
                    "eddy/attacker",
                    {
                        "model": "default",
                        "version": "v0002",
                        "from_version": "v0001",
                        "reason": "forged",
                    },
                    subject="default",
                )
                replayed = make_event(
                    "model.promoted",
                    "eddy/t",
                    {
                        "model": "default",
                        "version": "v0002",
                        "alias": "champion",
                        "previous_version": "v0001",
                    },
                    subject="default",
                    signing_key=key,
                )
                # A forged aliases record (no signature) straight onto the registry topic.
                forged_alias = {"model": "default", "aliases": {"champion": "v0002"}, "seq": 2**62}
                try:
                    for event in (forged, replayed, replayed):
                        await producer.send_and_wait(events, orjson.dumps(event))
                    await producer.send_and_wait(
                        registry.topic, orjson.dumps(forged_alias), key=b"aliases/default"
                    )
                finally:
                    await producer.stop()
                # Wait for the client to have read past the forged record, then check.
                await wait_for(
                    lambda: client.registry.fold.refused >= 1,
                    30,
                    "the forged aliases record read and refused",
                )
                served = [client.version]
                await registry.set_alias("default", "champion", "v0002")  # the real thing
                await asyncio.sleep(0)
                await wait_for(
                    lambda: client.registry.mirror.aliases("default").get("champion") == "v0002",
                    30,
                    "the real alias change seen",
                )
                served.append(client.version)
                return served, [why for _, why in client.refused]
            finally:
                await client.stop()

    served, refused = asyncio.run(scenario())
    # The forged and replayed events changed nothing; the real promotion of a version
    # whose export failed its gate is not servable: the client keeps the last servable.
    assert served == ["v0001", "v0001"]
    assert refused == []


def test_a_crafted_checkpoint_is_refused_and_the_partition_starts_over(settings, tmp_path) -> None:
    """A checkpoint that would run code when unpickled, put where the worker reads its
    state (the local copy and the changelog), is never executed; the worker falls back
    (here: to the start) and learns everything once."""
    import itertools

    from eddy.streams.kafka.admin import create_topics
    from eddy.streams.ops import sources
    from eddy.streams.ops.producer import ProduceOptions, produce
    from tests.integration.worker_helpers import learned, running_worker

    settings = settings.with_overrides(
        {"topic_prefix": settings.topics.prefix + "x.", "partitions": 1}
    )
    asyncio.run(create_topics(settings.kafka, settings.topics))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # runs marker.write_text("ran") when unpickled
            return (marker.write_text, ("ran",))

    forged = MAGIC + b"0" * 64 + b"\n" + zlib.compress(pickle.dumps(Evil()))
    group = f"{settings.topics.prefix}worker"
    cache = settings.data_dir / "checkpoints" / group / "p0.ckpt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(forged)
    cache.with_suffix(".json").write_bytes(orjson.dumps({"sha256": "x", "generation": 9}))

    async def scenario() -> int:
        from eddy.streams.state.chunks import send_blob

        producer = await start_producer(settings.kafka)
        try:  # and the same crafted bytes as the changelog's latest checkpoint
            await send_blob(
                producer,
                Topics(settings.topics.prefix).changelog,
                0,
                "state",
                forged,
                1 << 19,
                "a",
                0,
                {"generation": 9},
            )
        finally:
            await producer.stop()
        examples = itertools.islice(sources.open_named("sea", seed=3), 500)
        await produce(settings.kafka, settings.topics.prefix, examples, ProduceOptions(n=500))
        async with running_worker(settings) as worker:
            await wait_for(lambda: learned(worker) >= 500, 60, "500 learned from the start")
            return learned(worker)

    assert asyncio.run(scenario()) == 500
    assert not marker.exists()

"""Security settings: TLS/SASL reach every Kafka client; control events can be signed."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from eddy.consumers.hotswap import HotSwapClient
from eddy.consumers.retrainer import Retrainer
from eddy.streams.codec import decode_event, event_signature, make_event
from eddy.streams.exceptions import BadSignature, UnsignedEvent
from eddy.streams.kafka import client_options, make_consumer
from eddy.streams.settings import Settings

REPO = Path(__file__).resolve().parents[2]
KEY = "s3cret-signing-key"
EXPORTED = {
    "model": "default",
    "version": "v0002",
    "artifact": {"uri": "default/v0002/model.int8.onnx", "sha256": "ab" * 32,
                 "size_bytes": 1000, "format": "onnx-int8"},
    "servable": True,
    "report": {},
}  # fmt: skip


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA/cert/key made with openssl, for the TLS options."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=eddy-test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, cert, key


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_options_reach_consumers_and_admin_clients(
    tls_files: tuple[Path, Path, Path], mechanism: str
) -> None:
    ca, cert, key = tls_files
    settings = Settings(
        bootstrap="kafka.example:9093", security_protocol="SASL_SSL", sasl_mechanism=mechanism,
        sasl_username="eddy", sasl_password="pw", ssl_cafile=ca, ssl_certfile=cert,
        ssl_keyfile=key,
    )  # fmt: skip
    options = client_options(settings, "join")
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("eddy", "pw")
    assert options["ssl_context"].verify_mode.name == "CERT_REQUIRED"

    # Real client objects (built in a loop, not started: no broker speaks TLS here).
    async def build() -> tuple[object, object]:
        consumer = make_consumer(settings, "join")
        admin = AIOKafkaAdminClient(**client_options(settings, "admin"))
        return consumer._client, admin._client

    for client in asyncio.run(build()):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == mechanism
        assert client._sasl_plain_username == "eddy"
        assert client._ssl_context is not None
    assert "pw" not in str(settings.redacted())  # secrets stay out of logs


def test_sasl_without_credentials_is_a_clear_error() -> None:
    from eddy.streams.exceptions import ConfigError

    with pytest.raises(ConfigError, match="EDDY_SASL_USERNAME"):
        Settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN")


def test_every_kafka_client_is_built_from_client_options() -> None:
    """No module builds an aiokafka client by hand, so no client can miss TLS/SASL."""
    offenders = []
    for path in [*REPO.glob("streams/**/*.py"), *REPO.glob("consumers/**/*.py")]:
        if path.name == "kafka.py":
            continue
        text = path.read_text()
        if re.search(r"AIOKafka(Consumer|Producer|AdminClient)\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders
    kafka = (REPO / "streams/kafka.py").read_text()
    for constructor in ("AIOKafkaProducer(", "AIOKafkaConsumer(", "AIOKafkaAdminClient("):
        for call in re.findall(re.escape(constructor) + r"[^)]*\)", kafka):
            assert "**options" in call, call


def test_signed_events_verify_and_anything_else_is_refused() -> None:
    event = make_event("model.exported", "eddy/t", EXPORTED, subject="default", signing_key=KEY)
    assert decode_event(orjson.dumps(event), signing_key=KEY).id == event["id"]
    unsigned = {k: v for k, v in event.items() if k != "eddysig"}
    with pytest.raises(UnsignedEvent):
        decode_event(orjson.dumps(unsigned), signing_key=KEY)
    tampered = event | {"data": EXPORTED | {"version": "v0666"}}
    with pytest.raises(BadSignature):
        decode_event(orjson.dumps(tampered), signing_key=KEY)
    with pytest.raises(BadSignature):
        decode_event(orjson.dumps(event), signing_key="another key")
    # Re-signing the tampered event needs the key: with it, it verifies.
    resigned = tampered | {"eddysig": event_signature(tampered, KEY)}
    assert decode_event(orjson.dumps(resigned), signing_key=KEY).data["version"] == "v0666"


def test_hot_swap_client_refuses_unsigned_and_badly_signed_model_events(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, event_signing_key=KEY, bootstrap="127.0.0.1:1")
    client = HotSwapClient(settings, "default")
    good = make_event("model.exported", "eddy/t", EXPORTED, subject="default", signing_key=KEY)
    unsigned = {k: v for k, v in good.items() if k != "eddysig"}
    forged = good | {"data": EXPORTED | {"version": "v0001"}}

    async def feed() -> None:
        for event in (unsigned, forged, good):
            await client._on_event(orjson.dumps(event))

    asyncio.run(feed())
    reasons = [why for _, why in client.refused]
    assert "unsigned" in reasons[0] and "does not match" in reasons[1]
    # The signed one passed the check and went on to the registry (empty here).
    assert client.refused[2][0] == "v0002" and "signature" not in reasons[2]
    assert client.version is None  # nothing was swapped in


def test_control_consumers_refuse_unsigned_events(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, event_signing_key=KEY, bootstrap="127.0.0.1:1")
    retrainer = Retrainer(settings, producer=None)
    request = make_event("retrain.requested", "eddy/t",
                         {"stream": "default", "reason": "manual"}, subject="default")  # fmt: skip
    asyncio.run(retrainer._one(orjson.dumps(request)))
    assert retrainer.handled == 0
    refused = retrainer.metrics.handled.labels("retrainer", "unknown", "unsigned")._value.get()
    assert refused == 1

"""The model registry on Kafka: versions, aliases, online snapshots and the maintenance
log on one compacted topic; the local folder (:mod:`eddy.models.maintain.registry`) is a mirror
that any machine rebuilds from it.

Records of the registry topic (one partition, so one total order), by key:

- ``a/<model>/<version>/<artifact>``: an artifact, as a chunked blob with a manifest
  (:mod:`eddy.streams.state.chunks`: chunks checked by the manifest's SHA-256);
- ``card/<model>/<version>``: the model card (JSON), which lists each artifact's
  SHA-256; a version exists once its card is there and its artifacts match it;
- ``aliases/<model>``: ``{"aliases": {...}, "seq": n}``;
- ``log/<time>/<uuid>``: one maintenance log entry (kept forever: keys never repeat).

The online model of a stream is the version named ``online``: its card has
``"kind": "online"`` and is overwritten by each new snapshot.

With a signing key every card, aliases record and log entry carries ``sig``, an
HMAC-SHA256 of its canonical JSON; readers skip (and count) records without a valid
one, so a forged card or alias never reaches a mirror or a serving client. An aliases
record also carries a sequence number: an older one replayed is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from eddy.models.maintain.registry import (
    ONLINE,
    Registry,
    RegistryError,
    Version,
    artifact_info,
    log_entry,
    utc_now,
)
from eddy.streams.kafka.clients import (
    assign,
    close_client,
    end_offsets,
    make_consumer,
    start_consumer,
    start_producer,
)
from eddy.streams.kafka.topics import Topics
from eddy.streams.settings import KafkaConfig
from eddy.streams.state.chunks import chunk_size, send_blob
from eddy.streams.wire.codec import next_sequence

log = logging.getLogger(__name__)

SIG = "sig"


def sign(record: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``record`` with its ``sig``: HMAC-SHA256 of its canonical JSON without ``sig``.

    >>> signed(sign({"a": 1}, b"k"), b"k"), signed({"a": 1, "sig": "00"}, b"k")
    (True, False)
    """
    body = {k: v for k, v in record.items() if k != SIG}
    mac = hmac.new(key, orjson.dumps(body, option=orjson.OPT_SORT_KEYS), hashlib.sha256)
    return body | {SIG: mac.hexdigest()}


def signed(record: dict[str, Any], key: bytes) -> bool:
    """Whether ``record`` carries a valid ``sig`` under ``key``."""
    given = record.get(SIG)
    return isinstance(given, str) and hmac.compare_digest(given, sign(record, key)[SIG])


@dataclass
class RegistryFold:
    """The registry as read so far from the topic: latest value per key, folded in order.

    :meth:`apply` takes records in offset order; :attr:`changed` names the models whose
    cards, aliases or online snapshot changed since the last :meth:`materialize`.
    """

    key: bytes | None
    chunks: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    aliases: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)
    refused: int = 0
    position: int = 0

    def apply(self, record: ConsumerRecord) -> None:
        """Fold one record of the registry topic."""
        self.position = record.offset + 1
        key = record.key or b""
        text = key.decode(errors="replace")
        kind, _, rest = text.partition("/")
        if record.value is None:  # a tombstone
            self.chunks.pop(key, None)
            return
        if kind == "a" and text.count("/") >= 4:  # a/<model>/<version>/<artifact>/<slot>/<i>
            self.chunks[key] = (record.offset, record.value)
            return
        try:
            value = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            self.refused += 1
            return
        if kind == "a":  # a blob's manifest
            self.manifests[text] = value
            return
        if not isinstance(value, dict) or not self._authentic(value, text):
            return
        if kind == "card":
            model, _, version = rest.partition("/")
            self.cards[(model, version)] = value
            self.changed.add(model)
        elif kind == "aliases":
            current = self.aliases.get(rest)
            if (
                current is not None
                and self.key is not None
                and value.get("seq", 0) <= current.get("seq", 0)
            ):
                self.refused += 1
                log.warning("registry: an older aliases record of %r was replayed; refused", rest)
                return
            self.aliases[rest] = value
            self.changed.add(rest)
        elif kind == "log":
            self.log[text] = value

    def _authentic(self, value: dict[str, Any], what: str) -> bool:
        if self.key is None or signed(value, self.key):
            return True
        self.refused += 1
        log.warning("registry: %s is unsigned or badly signed (signing is on); refused", what)
        return False

    def artifact(self, model: str, version: str, name: str) -> bytes | None:
        """An artifact's bytes if all of its chunks are here and match its manifest."""
        manifest = self.manifests.get(f"a/{model}/{version}/{name}")
        if manifest is None:
            return None
        prefix = f"{manifest['name']}/{manifest['slot']}/"
        pieces = []
        for i, offset in enumerate(manifest["chunks"]):
            found = self.chunks.get(f"{prefix}{i}".encode())
            if found is None or found[0] != offset:
                return None
            pieces.append(found[1])
        data = b"".join(pieces)
        return data if hashlib.sha256(data).hexdigest() == manifest["sha256"] else None

    def materialize(self, mirror: Registry, models: set[str] | None = None) -> set[str]:
        """Write what the fold holds into ``mirror``; returns the models updated."""
        updated = set()
        for (model, version), card in list(self.cards.items()):
            if models is not None and model not in models:
                continue
            if self._write_version(mirror, model, version, card):
                updated.add(model)
        for model, record in self.aliases.items():
            if models is not None and model not in models:
                continue
            aliases = {k: v for k, v in record.get("aliases", {}).items() if isinstance(v, str)}
            if mirror.aliases(model) != aliases:
                mirror.write_aliases(model, aliases)
                updated.add(model)
        entries = sorted(
            ({k: v for k, v in e.items() if k != SIG} for e in self.log.values()),
            key=lambda e: (str(e.get("time")), str(e.get("id", ""))),
        )
        if entries != mirror.history():
            mirror.write_history(entries)
        self.changed -= set(self.cards_of(models)) if models is not None else set(self.changed)
        return updated

    def cards_of(self, models: set[str]) -> set[str]:
        """The models of ``models`` the fold knows (helper for partial materialization)."""
        return {m for m in models if any(k[0] == m for k in self.cards) or m in self.aliases}

    def _write_version(
        self, mirror: Registry, model: str, version: str, card: dict[str, Any]
    ) -> bool:
        card = {k: v for k, v in card.items() if k != SIG}
        try:
            if mirror.get(model, version).card == card and all(
                mirror.verify(model, version).values()
            ):
                return False  # mirrored already, and its files are intact
        except RegistryError:
            pass
        artifacts = {}
        for name, info in card.get("artifacts", {}).items():
            data = self.artifact(model, version, name)
            if data is None or artifact_info(data)["sha256"] != info.get("sha256"):
                return False  # not all here yet (or altered): the card waits for them
            artifacts[name] = data
        try:
            mirror.write_version(model, version, card, artifacts)
        except RegistryError as ex:
            log.warning("registry: %s %s not mirrored: %s", model, version, ex)
            return False
        return True


class KafkaRegistry:
    """The registry whose truth is the registry topic; ``mirror`` is the local copy.

    Reading: call :meth:`sync` (or follow with :meth:`follow`), then read
    :attr:`mirror`. Writing publishes to Kafka first and mirrors after, so nothing is
    registered that Kafka does not hold.
    """

    def __init__(
        self,
        kafka: KafkaConfig,
        prefix: str,
        root: Path,
        signing_key: bytes | None = None,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = Topics(prefix).registry
        self.mirror = Registry(root)
        self.key = signing_key
        self.fold = RegistryFold(signing_key)
        self._producer = producer
        self._own_producer = producer is None
        self._chunk = chunk_size(kafka.max_message_bytes)
        self._slots: dict[str, str] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, kafka: KafkaConfig, prefix: str, root: Path, signing_key: bytes | None = None
    ) -> AsyncIterator[KafkaRegistry]:
        """A registry with a producer of its own, synced once, closed on exit."""
        registry = cls(kafka, prefix, root, signing_key)
        try:
            await registry.sync()
            yield registry
        finally:
            await registry.close()

    async def close(self) -> None:
        """Stop the producer this registry started."""
        if self._own_producer and self._producer is not None:
            await close_client(self._producer)
            self._producer = None

    async def _producer_(self) -> AIOKafkaProducer:
        if self._producer is None:
            self._producer = await start_producer(self.kafka, "registry")
        return self._producer

    # -- reading -----------------------------------------------------------------------------

    async def sync(self, within_s: float = 60.0) -> None:
        """Read the topic to its current end and bring the mirror up to date."""
        consumer = make_consumer(
            self.kafka, "registry-sync", enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await start_consumer(consumer)
        try:
            tp = TopicPartition(self.topic, 0)
            end = (await end_offsets(consumer, [tp]))[tp]
            assign(consumer, [tp])
            consumer.seek(tp, self.fold.position)
            deadline = asyncio.get_running_loop().time() + within_s
            while self.fold.position < end:
                if asyncio.get_running_loop().time() > deadline:
                    msg = f"reading {self.topic} did not reach offset {end} within {within_s}s"
                    raise RegistryError(msg)
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
                for record in batch.get(tp, []):
                    if record.offset >= end:
                        break
                    self.fold.apply(record)
        finally:
            await consumer.stop()
        await asyncio.to_thread(self.fold.materialize, self.mirror)

    async def follow(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event
    ) -> AsyncIterator[set[str]]:
        """Tail the topic with ``consumer`` (not started by this); yields the models whose
        mirror changed after each batch."""
        tp = TopicPartition(self.topic, 0)
        assign(consumer, [tp])
        consumer.seek(tp, self.fold.position)
        while not stop.is_set():
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
            for record in batch.get(tp, []):
                self.fold.apply(record)
            if self.fold.changed:
                changed = set(self.fold.changed)
                await asyncio.to_thread(self.fold.materialize, self.mirror, changed)
                yield changed

    # -- writing -----------------------------------------------------------------------------

    async def register(
        self, model: str, card: dict[str, Any], artifacts: dict[str, bytes]
    ) -> Version:
        """Register a new version: artifacts, then the card, on Kafka; then the mirror."""
        await self.sync()
        version = self.mirror.next_version(model)
        card = dict(card, model=model, version=version, created=utc_now())
        card["artifacts"] = {name: artifact_info(data) for name, data in artifacts.items()}
        await self._publish_version(model, version, card, artifacts)
        return self.mirror.write_version(model, version, card, artifacts)

    async def add_artifacts(
        self, model: str, version: str, artifacts: dict[str, bytes], card_updates: dict[str, Any]
    ) -> Version:
        """Add artifacts to a version and merge ``card_updates`` into its card."""
        card = dict(self.mirror.get(model, version).card)
        card["artifacts"] = dict(card.get("artifacts", {}))
        for name, data in artifacts.items():
            card["artifacts"][name] = artifact_info(data)
        card.update(card_updates)
        await self._publish_version(model, version, card, artifacts)
        return self.mirror.add_artifacts(model, version, artifacts, card_updates)

    async def publish_online(
        self, model: str, card: dict[str, Any], artifacts: dict[str, bytes]
    ) -> None:
        """Replace the online snapshot of ``model`` (version ``online``, kind online)."""
        card = dict(card, model=model, version=ONLINE, kind="online", created=utc_now())
        card["artifacts"] = {name: artifact_info(data) for name, data in artifacts.items()}
        await self._publish_version(model, ONLINE, card, artifacts)
        self.mirror.write_version(model, ONLINE, card, artifacts)

    async def set_alias(self, model: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; returns the version it pointed at before."""
        self.mirror.get(model, version)  # it exists
        aliases = self.mirror.aliases(model)
        previous = aliases.get(alias)
        aliases[alias] = version
        seq = next_sequence(int(self.fold.aliases.get(model, {}).get("seq", 0)))
        record = {"model": model, "aliases": aliases, "seq": seq}
        await self._send(f"aliases/{model}", record)
        self.fold.aliases[model] = record
        self.mirror.write_aliases(model, aliases)
        return previous

    async def log(
        self, action: str, model: str, version: str | None, why: str, result: str, **extra: Any
    ) -> dict[str, Any]:
        """Append a maintenance log entry (Kafka, then the mirror)."""
        entry = log_entry(action, model, version, why, result, **extra)
        entry["id"] = str(uuid.uuid4())
        await self._send(f"log/{entry['time']}/{entry['id']}", entry)
        self.mirror.append_history(entry)
        return entry

    async def _publish_version(
        self, model: str, version: str, card: dict[str, Any], artifacts: dict[str, bytes]
    ) -> None:
        producer = await self._producer_()
        for name, data in artifacts.items():
            blob = f"a/{model}/{version}/{name}"
            slot = "b" if self._slots.get(blob) == "a" else "a"
            self._slots[blob] = slot
            await send_blob(producer, self.topic, 0, blob, data, self._chunk, slot)
        await self._send(f"card/{model}/{version}", card)

    async def _send(self, key: str, record: dict[str, Any]) -> None:
        producer = await self._producer_()
        value = sign(record, self.key) if self.key is not None else record
        await producer.send_and_wait(
            self.topic,
            orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS),
            key=key.encode(),
            partition=0,
        )


async def seed_registry(settings: Any) -> int:
    """Publish the local mirror's versions, aliases and log to an empty registry topic
    (a memory-only embedded broker starts empty each time); returns the versions sent."""
    from eddy.streams.wire.keys import signing_key

    root = settings.data_dir / "registry"
    local = Registry(root)
    if not local.models():
        return 0
    registry = KafkaRegistry(
        settings.kafka, settings.topics.prefix, root, signing_key(settings.state)
    )
    sent = 0
    try:
        await registry.sync()
        if registry.fold.cards:
            return 0  # the topic has a registry already: it is the truth
        for model in local.models():
            for version in [
                *local.versions(model),
                *([ONLINE] if _has_online(local, model) else []),
            ]:
                v = local.get(model, version)
                if not all(local.verify(model, version).values()):
                    continue
                artifacts = {name: v.artifact(name).read_bytes() for name in v.card["artifacts"]}
                await registry._publish_version(model, version, v.card, artifacts)
                sent += 1
            aliases = local.aliases(model)
            if aliases:
                await registry._send(
                    f"aliases/{model}", {"model": model, "aliases": aliases, "seq": next_sequence()}
                )
        for entry in local.history():
            entry = dict(entry)
            entry.setdefault("id", str(uuid.uuid4()))
            await registry._send(f"log/{entry['time']}/{entry['id']}", entry)
    finally:
        await registry.close()
    return sent


def _has_online(registry: Registry, model: str) -> bool:
    try:
        registry.get(model, ONLINE)
    except RegistryError:
        return False
    return True

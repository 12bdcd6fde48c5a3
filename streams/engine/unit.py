"""What a worker does with one partition's records, with no Kafka in it.

The worker agent (:mod:`eddy.streams.agents.worker`) fetches records and ships what
this module returns; :mod:`eddy.testing` feeds it in-memory records. Both run the
same code, which is why the broker-free harness tests eddy's own path.

One :class:`Unit` per partition number ``p`` owns:

- the **join** of the samples and labels whose id hashes to ``p`` (murmur2 of the id,
  as Java clients and aiokafka partition keys). A sample or label that a producer with
  another partitioner (librdkafka's CRC32) or no key put on another partition is
  forwarded there through the internal ``repartition`` topic, so samples and labels
  meet whatever client sent them;
- the **learners** of the model streams whose name hashes to ``p``: exactly one owner
  per stream. Examples of a stream joined in another partition are forwarded to its
  owner through ``repartition``; those joined here are learned at once.

For every valid sample, where it lands: decode and check it, predict it with its
stream's model as it is now (the owner's, in this process, or a replica published by
the owner elsewhere), publish the prediction, watch the features for drift, and hold
the sample with its *served* prediction until its label comes. When the label comes,
the owner scores the served prediction, learns the example, watches the error for
drift, and records the example on ``examples`` (the retrainer's window).

Records of one partition are processed in the order :mod:`eddy.streams.engine.merge`
gives (record timestamps across topics), one at a time, so a sample is predicted by
a model that has learned every label that came before it and none after.

Everything a unit does to its state is driven by records of its own partition, so a
checkpoint of the unit with its input offsets is exactly-once on its own; forwarded
records are deduplicated by their source position (samples, labels) or id
(examples), so a replay after a crash changes nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import orjson

from eddy.models.join import JoinBuffer, Joined, Pending, RecentIds, Unjoined
from eddy.models.learners import Prediction, Refused
from eddy.models.monitor.feature_drift import FeatureDrift, FeatureMonitor
from eddy.models.prequential import (
    DriftFinding,
    LabelledItem,
    Learn,
    Learned,
    Predict,
    StreamLearner,
    StreamSpec,
    label_problem,
)
from eddy.streams.engine.checkpoint import UnitState
from eddy.streams.engine.context import EngineConfig, EngineRuntime, Out, Outputs
from eddy.streams.engine.merge import LABEL, SAMPLE, Timed
from eddy.streams.exceptions import DecodeError, TimestampInFuture, UnlearnableLabel
from eddy.streams.kafka.partitioning import partition_of
from eddy.streams.records import Record
from eddy.streams.wire.batch import decode_labels, decode_samples
from eddy.streams.wire.codec import (
    Example,
    Label,
    Sample,
    Served,
    decode_example,
    decode_label,
    decode_sample,
    encode_example,
    feature_magnitude_problem,
    make_event,
    next_sequence,
    now_ms,
)
from eddy.streams.wire.deadletter import dead_letter_headers, truncate_for_dead_letter

log = logging.getLogger(__name__)

KIND = "eddy-kind"  # header of repartition records: sample, label or example
SOURCE = "eddy-source"  # header: topic:partition:offset of the original record
SERVED = "eddy-served"  # header of a forwarded sample: the prediction served for it
TIME = "eddy-time"  # header of repartition records: the event time they are merged at


class Unmatched(DecodeError):
    """A sample or label that left the join without its other half."""

    def __init__(self, kind: str, reason: str, ttl_s: float) -> None:
        self.reason = f"{kind}_{reason}"
        other = "label" if kind == "sample" else "sample"
        what = {
            "expired": f"waited longer than the join TTL ({ttl_s:g}s) and its {other} never came",
            "evicted": f"was evicted by the join's size cap (EDDY_JOIN_MAX_PENDING) before "
            f"its {other} came",
            "duplicate": "repeats the id of one already waiting or joined lately (a re-sent "
            "duplicate)",
        }[reason]
        super().__init__(f"{kind} {what}")


VALUE_TOO_LARGE = "value_too_large"


class Refusal(DecodeError):
    """A valid event eddy will not learn from (``reason`` says why)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class _Queue:
    """Work on one stream's learner, in arrival order, for :meth:`Unit._apply`."""

    __slots__ = ("index", "learned", "ops", "predicted")

    def __init__(self) -> None:
        self.ops: list[Predict | Learn] = []
        # per Predict: (sample, record, join partition, what the join holds)
        self.predicted: list[tuple[Sample, Record, int, _Held]] = []
        self.index: dict[int, int] = {}  # id() of a held sample -> position in predicted
        # per Learn: (index of its queued prediction or None, (example, record))
        self.learned: list[tuple[int | None, tuple[Example, Record]]] = []


class _Held(NamedTuple):
    """A sample waiting for its label: the sample, what was served, where it came from."""

    sample: Sample
    served: Served | None
    prediction: Prediction | None
    stored: Record


class Unit:
    """The processing of one partition; see the module docstring."""

    def __init__(self, state: UnitState, config: EngineConfig, runtime: EngineRuntime) -> None:
        self.state = state
        self.config = config
        self.runtime = runtime
        self.p = state.partition
        self._out = Outputs()  # what the call in progress produces (see _outputs)
        t = config.topics
        self._samples, self._labels, self._repartition = t.samples, t.labels, t.repartition
        self._to_predict: list[tuple[Sample, Record, int]] = []  # (sample, record, join partition)
        self._time = 0  # event time of the record being processed
        self._clock_seen = time.time() * 1000  # wall time the newest join clock came
        self._waiting_ids: set[str] = set()
        self._queues: dict[str, _Queue] = {}  # work on the learners here, see _queue_of
        self._source = f"{config.source}/p{self.p}"
        for name, learner in state.learners.items():
            runtime.directory.owned(name, learner)

    @staticmethod
    def new_state(partition: int, config: EngineConfig) -> UnitState:
        """The state of a partition that has no checkpoint."""
        return UnitState(
            partition=partition,
            join=JoinBuffer(config.join_ttl_ms, config.join_max_pending),
            recent=RecentIds(config.dedup_horizon),
        )

    def release(self) -> None:
        """The partition leaves this process: its learners no longer predict here."""
        for name in self.state.learners:
            self.runtime.directory.owned(name, None)

    # -- the loop ----------------------------------------------------------------------------

    def timed(self, topic: str, records: Sequence[Record]) -> list[Timed]:
        """Decode fetched ``records`` of ``topic`` and give each its event time: what
        the merger orders (:mod:`eddy.streams.engine.merge`) and :meth:`process` takes.

        The event time of a sample or label is its ``ts``, else (no ``ts``, or a
        record that does not decode) the record's timestamp, taken as now when it is
        beyond ``EDDY_MAX_FUTURE_S``. A repartition record carries the time it was
        merged at where it was forwarded from. Each record's ``time`` is set to it.

        When the record was sent (what the merger compares with fetch times) is its
        timestamp, or now for a timestamp in the future: a producer's clock running
        ahead must not hold a record back until that time comes.
        """
        now = now_ms()
        latest = now + self.config.max_future_ms
        out: list[Timed] = []
        if topic == self._repartition:
            for record in records:
                headers = dict(record.headers or ())
                kind = headers.get(KIND)
                raw = headers.get(TIME, b"")
                stamp = int(raw) if raw.isdigit() else _stamp(record, latest, now)
                record.time = stamp
                rank = SAMPLE if kind == b"sample" else LABEL
                out.append(
                    Timed(stamp, rank, record.offset, record, None, min(record.timestamp, now))
                )
            return out
        decode, rank = (
            (decode_samples, SAMPLE) if topic == self._samples else (decode_labels, LABEL)
        )
        events = decode([r.value for r in records], self.config.max_message_bytes)
        for record, event in zip(records, events, strict=True):
            if event.__class__ is not Sample and event.__class__ is not Label:
                # a DecodeError: dead-lettered when the merge hands it over
                record.time = _stamp(record, latest, now)
            elif event.ts is None:
                record.time = _stamp(record, latest, now)
            elif event.ts > latest:
                event = self._in_future(event.ts, latest)
                record.time = _stamp(record, latest, now)
            else:
                record.time = event.ts
            out.append(
                Timed(record.time, rank, record.offset, record, event, min(record.timestamp, now))
            )
        return out

    def _outputs(self) -> Outputs:
        """What the calls since the last one produced (and a fresh list for the next)."""
        out, self._out = self._out, Outputs()
        return out

    def process(self, items: Sequence[Timed]) -> Outputs:
        """Handle timed records of this partition (from :meth:`timed`) in the merged
        order; returns what they produced."""
        now = now_ms()
        latest = now + self.config.max_future_ms
        offsets = self.state.offsets
        for item in items:
            record = item.record
            topic = record.topic
            self._time = item.time
            self._note_time(topic, item.time)
            try:
                event = item.event
                if isinstance(event, DecodeError):
                    raise event
                if topic == self._samples:
                    self._on_sample(event, record, item.time)
                elif topic == self._labels:
                    self._on_label(event, record, item.time)
                else:
                    self._on_forwarded(record, item.time, latest, now)
            except DecodeError as ex:
                self.dead_letter(record, ex)
            offsets[topic] = record.offset + 1
        self._flush_predictions()
        self._gauge_pending()
        return self._outputs()

    def _note_time(self, topic: str, t: int) -> None:
        """Count late data: a record whose event time is below one its topic had before
        (``out_of_order``), or below one the merge already released from another input
        (``late``: it came after the merge went on without it). Either is processed
        where it stands, with the state as it is then."""
        state = self.state
        newest = state.newest.get(topic)
        if newest is not None and t < newest:
            kind = "out_of_order"
        elif t < state.frontier:
            kind = "late"
        else:
            kind = ""
        if newest is None or t > newest:
            state.newest[topic] = t
        if t > state.frontier:
            state.frontier = t
        if kind:
            which = self.config.topics.kind(topic)
            state.counts[f"{kind}:{which}"] += 1
            self.runtime.metrics.late.labels(which, kind).inc()

    def on_idle(self, clocks: dict[str, int]) -> Outputs:
        """Between batches: expire what waited too long (``clocks``: event-time clock of
        the samples and of the labels, from :meth:`idle_clocks`); what left the join
        counts in the outputs' ``changed``."""
        self._flush_predictions()
        expired = self.state.join.expire(clocks.get("labels", 0), clocks.get("samples", 0))
        if expired:
            self._emit(expired)
            self._gauge_pending()
        out = self._outputs()
        out.changed += len(expired)
        return out

    def flush(self) -> Outputs:
        """Predict and learn what waits for the end of a batch (before a checkpoint)."""
        self._flush_predictions()
        return self._outputs()

    def _gauge_pending(self) -> None:
        self.runtime.metrics.child("pending", str(self.p)).set(len(self.state.join))

    # -- samples -----------------------------------------------------------------------------

    def _on_sample(self, sample: Sample, record: Record, time_ms: int) -> None:
        self._advance_clock("samples", time_ms)
        spec, reason, message = self.runtime.policy.admit(sample.stream)
        if spec is None:
            raise Refusal(reason, message)
        problem = feature_magnitude_problem(sample.features, self.config.max_feature_magnitude)
        if problem is not None:
            raise Refusal(VALUE_TOO_LARGE, problem)
        if sample.label is not None:
            self._check_label(sample.stream, spec, sample.label)
        j = partition_of(sample.id, self.config.partitions)
        if j == self.p:
            if sample.id in self._waiting_ids:
                self._flush_predictions()  # its first copy goes to the join first
            if self.state.join.has_sample(sample.id):
                self._join_sample(_Held(sample, None, None, record))  # a duplicate: not predicted
                return
        queue = self._queue_of(sample.stream)
        if queue is not None:
            self._queue_sample(queue, sample, record, j)
            return
        self._to_predict.append((sample, record, j))
        self._waiting_ids.add(sample.id)
        # Labelled already (inline, or its label came first): predicted, then learned,
        # before the next sample is predicted.
        labelled = sample.label is not None or (j == self.p and sample.id in self.state.join.labels)
        if labelled and self._learns_at_once(sample.stream):
            self._flush_predictions()

    def _queue_of(self, stream: str) -> _Queue | None:
        """The queue of a stream whose learner lives in this unit (``None``: the stream
        takes the path of :meth:`flush_predictions`).

        Its samples are predicted, and its examples scored and learned, in arrival order
        but in one call into the learner per batch (:meth:`StreamLearner.apply`); the
        records that follow are built in :meth:`_apply`. Samples wait in the join
        meanwhile, so a label in the same batch joins them at once.
        """
        queue = self._queues.get(stream)
        if queue is None:
            learner = self.state.learners.get(stream)
            if learner is None or learner.immediate is not None:
                return None
            queue = self._queues[stream] = _Queue()
        return queue

    def _queue_sample(self, queue: _Queue, sample: Sample, stored: Record, j: int) -> None:
        held = _Held(sample, None, None, stored)
        queue.ops.append(Predict(sample.features))
        queue.index[id(held)] = len(queue.predicted)
        queue.predicted.append((sample, stored, j, held))
        if j != self.p:
            return  # forwarded with its prediction once it is made (_apply)
        self._join_sample(held)

    def _pending_prediction(self, held: _Held) -> int | None:
        """The index of ``held``'s prediction in its stream's queue, if not made yet."""
        if held.served is not None:
            return None
        queue = self._queues.get(held.sample.stream)
        if queue is None:
            return None
        return queue.index.get(id(held))  # the queue keeps each held alive: ids are unique

    def _settle(self) -> None:
        """Do the queued work of every stream (before anything reads the learners)."""
        while self._queues:
            stream, queue = self._queues.popitem()
            if queue.ops:
                self._apply(stream, queue)

    def _apply(self, stream: str, queue: _Queue) -> None:
        learner = self.state.learners[stream]
        started = time.perf_counter()
        applied = learner.apply(queue.ops)
        spent = time.perf_counter() - started
        version = learner.version
        served_of = [
            Served(p.value, p.proba, version, seen)
            for p, seen in zip(applied.predictions, applied.seen, strict=True)
        ]
        if queue.predicted:
            samples = [sample for sample, _, _, _ in queue.predicted]
            partitions = [j for _, _, j, _ in queue.predicted]
            self._publish_predictions(
                stream, samples, partitions, applied.predictions, version, applied.seen, 0
            )
            self._watch_features(
                stream, samples, applied.predictions, version, queue.predicted[-1][1]
            )
            waiting = self.state.join.samples
            for (sample, stored, j, held), prediction, served in zip(
                queue.predicted, applied.predictions, served_of, strict=True
            ):
                if j != self.p:
                    self._forward(stored, b"sample", j, served)
                    continue
                entry = waiting.get(sample.id)
                if entry is not None and entry.payload is held:  # still waiting for its label
                    waiting[sample.id] = replace(
                        entry, payload=held._replace(served=served, prediction=prediction)
                    )
        for k, (example, _) in queue.learned:
            if k is not None:
                example.served = served_of[k]
        self._learned(stream, learner, queue.learned, applied.learned, spent)

    def _learned(
        self,
        stream: str,
        learner: StreamLearner,
        entries: Sequence[tuple[Any, tuple[Example, Record]]],
        learned: Learned,
        spent: float,
    ) -> None:
        """Record what a learner learned of ``entries`` (``(_, ref)``: each example with
        its record, as passed to the learner): the examples topic, metrics, refusals,
        drift."""
        runtime = self.runtime
        gone = {id(r.ref) for r in learned.refused}
        out, topic, key = self._out.examples, self.config.topics.examples, stream.encode()
        for _, ref in entries:
            if gone and id(ref) in gone:
                continue
            example = ref[0]
            if runtime.on_learned is not None:
                runtime.on_learned(stream, example.features, example.label)
            out.append(Out(topic, encode_example(example), key, self.p))
        metrics = runtime.metrics
        if learned.learned > 0:  # refusals found later can outnumber a call's examples
            metrics.child("learned", stream).inc(learned.learned)
        if entries:
            metrics.child("learn_seconds", stream).observe(spent / len(entries))
        for refused in learned.refused:
            self._refused(stream, refused)
        for finding in learned.findings:
            self._drift(learner, finding)

    def _learns_at_once(self, stream: str) -> bool:
        predictor, _ = self.runtime.directory.predictor(stream)
        changes = getattr(predictor, "changes_on_learn", None)
        return predictor is None or changes is None or bool(changes())

    def _flush_predictions(self) -> None:
        """Predict the samples read since the last flush, publish, and hold them."""
        self._settle()
        if not self._to_predict:
            return
        pending, self._to_predict = self._to_predict, []
        self._waiting_ids.clear()
        by_stream: dict[str, list[tuple[Sample, Record, int]]] = {}
        for item in pending:
            by_stream.setdefault(item[0].stream, []).append(item)
        for stream, items in by_stream.items():
            predictor, staleness = self.runtime.directory.predictor(stream)
            xs = [s.features for s, _, _ in items]
            if predictor is None:
                predictions = [Prediction(None)] * len(items)
                version, learned = "none", 0
            else:
                predictions = predictor.predict(xs)
                version, learned = predictor.version, predictor.learned
            samples = [s for s, _, _ in items]
            self._publish_predictions(
                stream,
                samples,
                [j for _, _, j in items],
                predictions,
                version,
                [learned] * len(items),
                staleness,
            )
            self._watch_features(stream, samples, predictions, version, items[-1][1])
            for (sample, stored, j), prediction in zip(items, predictions, strict=True):
                served = Served(prediction.value, prediction.proba, version, learned)
                if j == self.p:
                    self._join_sample(_Held(sample, served, prediction, stored))
                else:
                    self._forward(stored, b"sample", j, served)
        self._settle()  # what those joins queued (a stream whose learner began just now)

    def _publish_predictions(
        self,
        stream: str,
        samples: Sequence[Sample],
        partitions: Sequence[int],
        predictions: Sequence[Prediction],
        version: str,
        learned: Sequence[int],
        staleness: int,
    ) -> None:
        """One prediction record per sample, to the partition that joins it (``partitions``);
        ``learned``: how many examples the model had learned when it predicted each."""
        ts = now_ms()
        out = self._out.predictions
        topic = self.config.topics.predictions
        hook = self.runtime.hooks.on_prediction
        for sample, j, prediction, seen in zip(
            samples, partitions, predictions, learned, strict=True
        ):
            event: dict[str, Any] = {
                "id": sample.id,
                "stream": stream,
                "model_version": version,
                "model_examples": seen,
                "staleness_ms": staleness,
                "prediction": prediction.value,
                "ts": ts,
            }
            if prediction.proba:
                event["proba"] = prediction.proba
            out.append(
                Out(
                    topic,
                    orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS),
                    sample.id.encode(),
                    j,
                )
            )
            if hook is not None:
                self._call(hook, event)
        metrics = self.runtime.metrics
        metrics.child("predictions", stream).inc(len(samples))
        metrics.child("staleness", stream).observe(staleness / 1000)

    def _watch_features(
        self,
        stream: str,
        samples: Sequence[Sample],
        predictions: Sequence[Prediction],
        version: str,
        last: Record,
    ) -> None:
        config = self.config.feature_drift
        if config is None or not self.runtime.policy.spec(stream).feature_drift:
            return
        monitor = self.state.monitors.get(stream)
        if monitor is None:
            monitor = self.state.monitors[stream] = FeatureMonitor(config)
        rows = [s.features if isinstance(s.features, dict) else _dense(s.features) for s in samples]
        found = monitor.update_many(rows, [p.value for p in predictions])
        if found:
            self._feature_drift(stream, found, monitor, version, last)

    def _feature_drift(
        self,
        stream: str,
        found: list[FeatureDrift],
        monitor: FeatureMonitor,
        version: str,
        stored: Record,
    ) -> None:
        metrics = self.runtime.metrics
        for finding in found:
            metrics.feature_drifts.labels(stream, finding.kind).inc()
        cooldown = self.config.feature_drift_cooldown_s
        last = self.runtime.feature_drift_last.get(stream)
        if last is not None and time.monotonic() - last < cooldown:
            metrics.feature_drifts_suppressed.labels(stream).inc(len(found))
            return
        self.runtime.feature_drift_last[stream] = time.monotonic()
        retrain = self.runtime.policy.spec(stream).feature_drift_retrain
        data = {
            "stream": stream,
            "partition": self.p,
            "position": {
                "partition": stored.partition,
                "offset": stored.offset,
                "sample_count": monitor.count,
            },
            "retrain": retrain,
            "findings": [_finding_json(f) for f in found[:256]],
        }
        if version != "none":
            data["model_version"] = version
        log.info(
            "features of stream %r moved (partition %d, %d samples): %s",
            stream,
            self.p,
            monitor.count,
            ", ".join(f"{f.feature} {f.test} p={f.p_value:.2g}" for f in found[:8]),
        )
        event_id = self._event_id("feature_drift", stream, monitor.count)
        event = self._event("feature_drift.detected", data, stream, event_id)
        if self.runtime.hooks.on_drift is not None:
            self._call(self.runtime.hooks.on_drift, {"type": "feature_drift"} | data)
        if retrain:
            request = {"stream": stream, "reason": "feature_drift", "trigger_event_id": event["id"]}
            self._event(
                "retrain.requested",
                request,
                stream,
                self._event_id("retrain-features", stream, monitor.count),
            )

    # -- labels and the join -----------------------------------------------------------------

    def _on_label(self, label: Label, record: Record, time_ms: int) -> None:
        self._advance_clock("labels", time_ms)
        j = partition_of(label.id, self.config.partitions)
        if j != self.p:
            self._forward(record, b"label", j)
            return
        self._join_label(label, record)

    def _join_sample(self, held: _Held) -> None:
        sample, stored = held.sample, held.stored
        pending = Pending(sample.id, held, (stored.partition, stored.offset), stored.time)
        self._emit(self.state.join.add_sample(pending, sample.label))

    def _join_label(self, label: Label, stored: Record) -> None:
        if label.id in self._waiting_ids:
            self._flush_predictions()  # its sample was read in this batch: hold it first
        pending = Pending(label.id, (label, stored), (stored.partition, stored.offset), stored.time)
        self._emit(self.state.join.add_label(pending))

    def _emit(self, results: list[Joined | Unjoined]) -> None:
        counts = self.state.counts
        for result in results:
            if isinstance(result, Joined):
                held: _Held = result.sample.payload
                if isinstance(result.label, tuple):  # a label record: (Label, Record)
                    label, label_stored = result.label
                    value = label.label
                    spec = self.runtime.policy.spec(held.sample.stream)
                    try:
                        self._check_label(held.sample.stream, spec, value)
                    except DecodeError as error:
                        self.dead_letter(label_stored, error)
                        self.dead_letter(held.stored, error)
                        continue
                else:
                    value = result.label
                counts["joined"] += 1
                sample = held.sample
                example = Example(
                    id=sample.id,
                    stream=sample.stream,
                    features=sample.features,
                    label=value,
                    sample=(held.stored.partition, held.stored.offset),
                    label_at=result.label_position,
                    ts=sample.ts,
                    served=held.served,
                )
                if sample.ts is not None and result.label_position is not None:
                    delay = max(now_ms() - sample.ts, 0) / 1000
                    self.runtime.metrics.label_delay.observe(delay)
                q = partition_of(sample.stream, self.config.partitions)
                if q == self.p:
                    k = self._pending_prediction(held)
                    self._learn(example, held.prediction if k is None else k, held.stored)
                else:
                    self._forward_example(example, held.stored, q)
            else:
                stored = (
                    result.entry.payload.stored
                    if result.kind == "sample"
                    else (result.entry.payload[1])
                )
                error = Unmatched(result.kind, result.reason, self.config.join_ttl_ms / 1000)
                counts[error.reason] += 1
                self.runtime.metrics.unjoined.labels(result.kind, result.reason).inc()
                self.dead_letter(stored, error)

    # -- forwarding --------------------------------------------------------------------------

    def _forward(self, stored: Record, kind: bytes, to: int, served: Served | None = None) -> None:
        # The original record whole (its own headers too), plus where it came from.
        source = f"{stored.topic}:{stored.partition}:{stored.offset}".encode()
        headers = [*stored.headers, (KIND, kind), (SOURCE, source), (TIME, b"%d" % stored.time)]
        if served is not None:
            headers.append((SERVED, orjson.dumps(served.as_json(), option=orjson.OPT_NON_STR_KEYS)))
        self._out.forwards.append(
            Out(
                self.config.topics.repartition,
                stored.value,
                stored.key,
                to,
                headers,
                stored.timestamp,
            )
        )
        self.runtime.metrics.forwarded.labels(kind.decode()).inc()

    def _forward_example(self, example: Example, stored: Record, to: int) -> None:
        headers = [
            (KIND, b"example"),
            (SOURCE, f"{stored.topic}:{stored.partition}:{stored.offset}".encode()),
            (TIME, b"%d" % self._time),  # when the join completed: the label's time
        ]
        self._out.forwards.append(
            Out(
                self.config.topics.repartition,
                encode_example(example),
                example.stream.encode(),
                to,
                headers,
            )
        )
        self.runtime.metrics.forwarded.labels("example").inc()

    def _on_forwarded(self, record: Record, time_ms: int, latest: int, now: int) -> None:
        headers = dict(record.headers or ())
        kind = headers.get(KIND)
        source = headers.get(SOURCE, b"").decode(errors="replace")
        origin = _origin(record, source, time_ms)
        if kind == b"example":
            example = decode_example(record.value, self.config.max_message_bytes)  # type: ignore[arg-type]
            prediction = _prediction_of(example.served, example.label)
            self._learn(example, prediction, origin)
            return
        where, _, offset = source.rpartition(":")
        if kind not in (b"sample", b"label") or not offset.isdigit():
            message = f"repartition record with kind {kind!r} and source {source!r}"
            raise DecodeError(message)
        if int(offset) <= self.state.forwarded.get(where, -1):
            return  # replayed by its sender after a restart: applied already
        self.state.forwarded[where] = int(offset)
        if kind == b"sample":
            sample = self._decode(decode_sample, record, latest)
            self._advance_clock("samples", time_ms)
            served_raw = headers.get(SERVED)
            served = _served_from_json(orjson.loads(served_raw)) if served_raw else None
            prediction = _prediction_of(served, sample.label)
            self._join_sample(_Held(sample, served, prediction, origin))
        else:
            label = self._decode(decode_label, record, latest)
            self._advance_clock("labels", time_ms)
            self._join_label(label, origin)

    # -- learning ----------------------------------------------------------------------------

    def _learn(self, example: Example, prediction: Prediction | int | None, stored: Record) -> None:
        """Score ``prediction`` (or, by its index, one queued) and learn ``example``."""
        state = self.state
        if example.id in state.recent:
            state.counts["duplicates"] += 1
            self.runtime.metrics.duplicates.labels(example.stream).inc()
            return
        queue = self._queue_of(example.stream)
        if queue is not None:
            state.recent.add(example.id)
            ref = (example, stored)
            queue.ops.append(Learn(example.features, example.label, prediction, ref))
            queue.learned.append((prediction if type(prediction) is int else None, ref))
            return
        assert not isinstance(prediction, int)  # queued predictions are of queued streams
        learner = state.learners.get(example.stream)
        if learner is None:
            spec = self.runtime.policy.spec(example.stream)
            learner = state.learners[example.stream] = StreamLearner(example.stream, spec)
            self.runtime.directory.owned(example.stream, learner)
            log.info(
                "new stream %r (%s, %s) in partition %d",
                example.stream,
                spec.model_name,
                spec.task,
                self.p,
            )
        if learner.changes_on_learn() and self._to_predict:
            self._flush_predictions()  # samples read before this label see the model before it
        state.recent.add(example.id)
        ref = (example, stored)
        started = time.perf_counter()
        learned = learner.learn([LabelledItem(example.features, example.label, prediction, ref)])
        learned.refused += learner.take_refused()
        self._learned(
            example.stream, learner, [(None, ref)], learned, time.perf_counter() - started
        )

    def flush_learners(self) -> Outputs:
        """Learn the examples mini-batch learners still collect (a partial batch), and
        dead-letter what they refuse."""
        self._flush_predictions()
        for name, learner in self.state.learners.items():
            flush = getattr(learner.learner, "flush", None)
            if flush is not None:
                flush()
            for refused in learner.take_refused():
                self._refused(name, refused)
        return self._outputs()

    def _refused(self, stream: str, refused: Refused) -> None:
        example, stored = refused.ref
        error = Refusal(refused.reason, f"learning stream {stream!r}: {refused.message}")
        value = encode_example(example)
        self.dead_letter(stored, error, value=value)
        log.warning(
            "stream %r refused example %r (%s): %s",
            stream,
            example.id,
            refused.reason,
            refused.message,
        )

    def _drift(self, learner: StreamLearner, finding: DriftFinding) -> None:
        signal = finding.signal
        stream = learner.stream
        self.runtime.metrics.drifts.labels(stream, signal.level).inc()
        _, stored = finding.ref
        position = {
            "partition": stored.partition,
            "offset": stored.offset,
            "sample_count": signal.count,
        }
        log.info(
            "%s %s on stream %r at example %d", signal.detector, signal.level, stream, signal.count
        )
        data = {
            "stream": stream,
            "model_version": learner.version,
            "detector": signal.detector,
            "level": signal.level,
            "position": position,
            "metrics_before": finding.metrics_before,
            "metrics_after": finding.metrics_after,
        }
        drift = self._event(
            "drift.detected",
            data,
            stream,
            self._event_id("drift", stream, signal.count, signal.level),
        )
        if self.runtime.hooks.on_drift is not None:
            self._call(self.runtime.hooks.on_drift, {"type": "drift"} | data)
        if signal.level != "drift":
            return
        request = {
            "stream": stream,
            "reason": "drift",
            "trigger_event_id": drift["id"],
            "position": position,
        }
        self._event(
            "retrain.requested",
            request,
            stream,
            self._event_id("retrain", stream, signal.count, signal.level),
        )

    # -- helpers -----------------------------------------------------------------------------

    def dead_letter(self, record: Any, error: BaseException, value: bytes | None = None) -> None:
        """Send ``record`` (or ``value`` in its place) to the dead-letter topic: the one
        path every dead letter takes, counted once."""
        reason = getattr(error, "reason", "error")
        raw = record.value if value is None else value
        raw, extra = truncate_for_dead_letter(raw, self.config.max_message_bytes - 16 * 1024)
        headers = dead_letter_headers(record, error, self.config.group) + extra
        self._out.dead_letters.append(
            Out(self.config.topics.deadletter, raw, record.key, 0, headers)
        )
        kind = self.config.topics.kind(record.topic)
        self.runtime.metrics.dead_lettered.labels(kind, reason).inc()
        self.state.counts[f"dead:{reason}"] += 1
        if self.runtime.hooks.on_error is not None:
            self._call(
                self.runtime.hooks.on_error,
                {
                    "reason": reason,
                    "message": str(error),
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
        log.debug(
            "dead-lettered %s[%d]@%d (%s): %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
            error,
        )

    def _decode(self, decode: Any, record: Record, latest: int) -> Any:
        event = decode(record.value, self.config.max_message_bytes)
        if event.ts is not None and event.ts > latest:
            raise self._in_future(event.ts, latest)
        return event

    def _in_future(self, ts: int, latest: int) -> TimestampInFuture:
        ahead = (ts - latest + self.config.max_future_ms) / 1000
        msg = (
            f"$.ts is {ahead:,.0f} s ahead of this machine's clock; at most "
            f"{self.config.max_future_ms / 1000:g} s is accepted (EDDY_MAX_FUTURE_S)"
        )
        return TimestampInFuture(msg)

    def _advance_clock(self, which: str, time_ms: int) -> None:
        # The join's event-time clocks (see on_idle). Event times beyond
        # EDDY_MAX_FUTURE_S never get here: such events are dead-lettered, and such
        # record timestamps count as "now" (see timed).
        clocks = self.state.clocks
        if time_ms > clocks.get(which, 0):
            clocks[which] = time_ms
            self._clock_seen = time.time() * 1000

    def idle_clocks(self, caught_up_at_ms: float | None) -> dict[str, int]:
        """The join's event-time clocks, for :meth:`on_idle`. ``caught_up_at_ms``: the
        wall time of a fetch that found every input of the partition caught up, if one
        did since the newest event came: event time then moves on with the wall clock
        from the newest event, so that what waits for a label that will not come
        expires after the TTL even when nothing else comes."""
        clocks = dict(self.state.clocks)
        if caught_up_at_ms is not None and clocks:
            moved = max(clocks.values()) + int(max(0.0, caught_up_at_ms - self._clock_seen))
            for which in ("samples", "labels"):
                clocks[which] = max(clocks.get(which, 0), moved)
        return clocks

    def _check_label(self, stream: str, spec: StreamSpec, label: Any) -> None:
        """Raise what makes ``label`` unlearnable for ``spec``: a label of the wrong kind
        for the task (``unknown_class``, explained once per stream), or a number beyond
        the accepted magnitude (``value_too_large``, as for features)."""
        problem = label_problem(spec.task, label)
        if problem is not None:
            self._warn_task(stream, spec, label)
            raise UnlearnableLabel(problem)
        if spec.task != "regression" or isinstance(label, bool):
            return
        bound = self.config.max_feature_magnitude
        if isinstance(label, int | float) and not -bound <= label <= bound:
            problem = (
                f"$.label is {label:g}, beyond the accepted magnitude {bound:g} "
                "(EDDY_MAX_FEATURE_MAGNITUDE)"
            )
            raise Refusal(VALUE_TOO_LARGE, problem)

    def _warn_task(self, stream: str, spec: StreamSpec, label: Any) -> None:
        key = (stream, spec.task)
        if key in self.runtime.warned:
            return
        self.runtime.warned.add(key)
        if spec.task == "binary":
            fix = (
                f"its labels look like classes such as {label!r}: set the stream's task to "
                'multiclass (--task multiclass, EDDY_TASK, or task = "multiclass" in its '
                f"[streams.{stream}] table)"
            )
        elif spec.task == "regression":
            fix = (
                f"its labels look like classes such as {label!r}, not numbers: set the "
                "stream's task to binary or multiclass"
            )
        else:
            fix = f"label {label!r} cannot be learned"
        log.warning(
            "stream %r is configured for task %s but %s; until then its examples are "
            "dead-lettered (unknown_class). This is said once per stream.",
            stream,
            spec.task,
            fix,
        )

    def _event(self, kind: str, data: dict[str, Any], stream: str, event_id: str) -> dict[str, Any]:
        self.state.sequence = next_sequence(self.state.sequence)
        # Each partition is its own source: its sequence numbers grow on their own.
        event = make_event(
            kind,
            self._source,
            data,
            subject=stream,
            event_id=event_id,
            signing_key=self.config.signing_key,
            sequence=self.state.sequence,
        )
        self._out.events.append(
            Out(self.config.topics.events, orjson.dumps(event), stream.encode(), 0)
        )
        return event

    def _event_id(self, kind: str, stream: str, count: int, level: str = "") -> str:
        # Deterministic: a replay after a crash re-sends the same id, which consumers
        # drop by (source, id).
        name = f"{self._source}/{kind}/{stream}/{level}/{count}"
        return str(uuid.uuid5(uuid.NAMESPACE_URL, name))

    def _call(self, hook: Callable[[dict[str, Any]], None], payload: dict[str, Any]) -> None:
        try:
            hook(payload)
        except Exception:
            log.exception("a hook raised; the worker goes on")


# -- small helpers -------------------------------------------------------------------------------


def _dense(features: list[Any]) -> dict[str, Any]:
    return {str(i): v for i, v in enumerate(features)}


def _finding_json(f: FeatureDrift) -> dict[str, Any]:
    return {
        "feature": f.feature[:256],
        "kind": f.kind,
        "test": f.test,
        "statistic": float(f.statistic) if abs(f.statistic) < 1e300 else 1e300,
        "p_value": min(max(float(f.p_value), 0.0), 1.0),
        "reference_size": f.reference_size,
        "recent_size": f.recent_size,
    }


_INTERNAL_HEADERS = frozenset((KIND, SOURCE, SERVED))


def _stamp(record: Record, latest: int, now: int) -> int:
    """A record's own timestamp as an event time (``now`` when beyond ``latest``)."""
    return record.timestamp if record.timestamp <= latest else now


def _origin(record: Record, source: str, time_ms: int) -> Record:
    """The original record a forwarded one stands for (for dead letters and positions)."""
    topic, _, rest = source.rpartition(":")
    where_topic, _, partition = topic.rpartition(":")
    headers = tuple((k, v) for k, v in (record.headers or ()) if k not in _INTERNAL_HEADERS)
    try:
        return Record(
            where_topic,
            int(partition),
            int(rest),
            record.timestamp,
            record.key,
            record.value,
            headers,
            time_ms,
        )
    except ValueError:
        return record


def _served_from_json(value: dict[str, Any]) -> Served:
    return Served(
        value.get("prediction"),
        value.get("proba"),
        value["model_version"],
        int(value["model_examples"]),
    )


def _prediction_of(served: Served | None, label: Any) -> Prediction | None:
    """The served prediction as the learner scores it. Through JSON, class keys of the
    probabilities became text: they get the type of the stream's labels back."""
    if served is None:
        return None
    proba = served.proba
    if proba and label is not None:
        proba = {_as_label_type(k, label): v for k, v in proba.items()}
    return Prediction(served.prediction, proba)


def _as_label_type(key: Any, label: Any) -> Any:
    if not isinstance(key, str):
        return key
    if isinstance(label, bool):
        return key == "true" if key in ("true", "false") else key
    if isinstance(label, int):
        try:
            return int(key)
        except ValueError:
            return key
    if isinstance(label, float):
        try:
            return float(key)
        except ValueError:
            return key
    return key

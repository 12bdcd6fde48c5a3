"""The exporter: ``model.updated`` → compressed variants → gate → int8 ``model.exported``.

The version's model (``model.pt``, the *teacher*) is turned into int8 variants that
are measured against it, in fp32, on the version's held-out examples
(:func:`eddy.models.maintain.compress.compress`): the teacher itself, a student distilled on
the training window the retrainer stored (``train.npz``; ``export_distill``), the
teacher structurally pruned at each level of ``export_ladder`` (and magnitude-pruned
by ``export_prune`` when it is above 0). A variant passes the gate when it is at
least ``export_min_ratio`` times smaller than the teacher in fp32 and loses at most
``export_max_delta`` accuracy (or gains at most that much MAE); the smallest passing
one is served. With distillation off and no ladder level, the export is the teacher's
own int8 (magnitude-pruned by ``export_prune``), gated against its fp32 as before.

The served int8 graph is always ``model.int8.onnx`` (hot-swap clients load that
name) and ``model.onnx`` is the fp32 graph it was quantized from. A student or a
pruned variant is also stored as ``model.variant.pt``; it keeps the teacher's
feature order and classes (checked here), so ``model.pt`` stays the teacher and
stays what clients read feature names and classes from. The report is recorded in
the card (``quantization``: the served variant against the teacher fp32;
``export_gate``; ``compression``: every variant's row and a table); the event says
``servable: true`` only when the gate passes and the version is the champion, so
serving code never swaps to a model that failed its gate.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import numpy as np
import orjson

from eddy.consumers.control import ControlConsumer
from eddy.models.maintain.batch import BatchModel
from eddy.models.maintain.compress import (
    CompressionReport,
    DistillParams,
    compress,
    parameter_count,
    student_hidden_for,
)
from eddy.models.maintain.export import (
    compare_int8,
    prune,
    quantize_int8,
    read_train_window,
    to_onnx,
)
from eddy.models.maintain.registry import RegistryError
from eddy.streams.settings import MaintenanceConfig
from eddy.streams.wire.codec import ControlEvent

log = logging.getLogger(__name__)

INT8 = "model.int8.onnx"
FP32 = "model.onnx"
VARIANT = "model.variant.pt"
TRAIN = "train.npz"
TEACHER_INT8 = "teacher-int8"


class Exporter(ControlConsumer):
    """Handles ``model.updated``."""

    name = "exporter"
    types = ("model.updated",)

    async def handle(self, event: ControlEvent) -> None:
        """Export once per version; re-announce if it was exported before a crash."""
        model, version = event.data["model"], event.data["version"]
        await self.registry.sync()
        mirror = self.registry.mirror
        v = mirror.get(model, version)
        if INT8 not in v.card.get("artifacts", {}):
            if not all(mirror.verify(model, version).values()):
                msg = f"{model} {version} fails its checksums; refusing to export it"
                raise RegistryError(msg)
            started = time.monotonic()
            updates, artifacts = await asyncio.to_thread(self._export, v)
            updates["quantization"]["seconds"] = round(time.monotonic() - started, 3)
            v = await self.registry.add_artifacts(model, version, artifacts, updates)
            report, passed = updates["quantization"], updates["export_gate"]["passed"]
            self.metrics.results.labels(self.name, "servable" if passed else "not_servable").inc()
            self.metrics.size_ratio.labels(model).set(report["size_ratio"])
            self.metrics.accuracy_delta.labels(model).set(report["accuracy_delta"])
            reason = updates["export_gate"]["reason"]
            result = "servable" if passed else f"not servable: {reason}"
            extra = {"variant": report["variant"]} if "variant" in report else {}
            await self.registry.log(
                "export",
                model,
                version,
                f"model.updated {event.id}",
                result,
                seconds=report["seconds"],
                **extra,
            )
        champion = mirror.aliases(model).get("champion") == version
        gate = v.card["export_gate"]
        servable = gate["passed"] and champion
        info = v.card["artifacts"][INT8]
        data = {
            "model": model,
            "version": version,
            "artifact": {
                "uri": f"{model}/{version}/{INT8}",
                "sha256": info["sha256"],
                "size_bytes": info["size_bytes"],
                "format": "onnx-int8",
            },
            "servable": servable,
            "report": v.card["quantization"] | {"gate": gate, "champion": champion},
        }
        if "variant" in v.card["quantization"]:
            data["variant"] = v.card["quantization"]["variant"]
        await self.emit(
            "model.exported",
            data,
            subject=model,
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/exported")),
        )

    def _export(self, v: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
        """``(card updates, artifacts)`` of a version's export."""
        m = self.settings.maintenance
        teacher = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
        holdout = orjson.loads(v.artifact("holdout.json").read_bytes())
        hold_x = np.asarray(holdout["X"], dtype=np.float32)
        if not compressing(m):
            return self._int8_only(teacher, hold_x, holdout["y"])
        if TRAIN not in v.card.get("artifacts", {}):
            updates, artifacts = self._int8_only(teacher, hold_x, holdout["y"])
            why = f"{v.model} {v.version} has no {TRAIN} (registered before compression existed)"
            log.warning("exporter: %s; exporting the model's own int8", why)
            return updates | {"compression": {"skipped": why}}, artifacts
        train_x, names = read_train_window(v.artifact(TRAIN).read_bytes())
        if names != teacher.feature_names:
            msg = (
                f"{v.model} {v.version}: {TRAIN} columns {names[:5]}… differ from model.pt's "
                f"{teacher.feature_names[:5]}…; re-register the version with a current retrainer"
            )
            raise RegistryError(msg)
        student, student_note = None, "no student: EDDY_EXPORT_DISTILL is off"
        if m.export_distill:
            student, student_note = student_plan(teacher, m.export_student_size)
        report = compress(
            teacher,
            train_x,
            hold_x,
            holdout["y"],
            max_delta=m.export_max_delta,
            min_size_ratio=m.export_min_ratio,
            ladder=ladder_levels(m.export_ladder),
            student=student,
            with_student=student is not None,
            magnitude=m.export_prune > 0,
            magnitude_ladder=(m.export_prune,) if m.export_prune > 0 else None,
            seed=teacher.params.seed,
        )
        served = report.chosen_model if report.chosen_model is not None else teacher
        check_same_interface(teacher, served)
        int8 = (
            report.chosen_onnx
            if report.chosen_onnx is not None
            else quantize_int8(to_onnx(teacher))
        )
        artifacts = {FP32: to_onnx(served), INT8: int8}
        if served is not teacher:
            artifacts[VARIANT] = served.to_bytes()
        compression = report.as_dict() | {
            "served": report.chosen or TEACHER_INT8,
            "student": student_note,
            "table": report.table(),
        }
        updates = {
            "quantization": quantization_of(report),
            "export_gate": {"passed": report.chosen is not None, "reason": report.reason},
            "compression": compression,
        }
        return updates, artifacts

    def _int8_only(
        self, model: BatchModel, matrix: np.ndarray, targets: list[Any]
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The model's own int8 (magnitude-pruned by ``export_prune``) against its fp32."""
        m = self.settings.maintenance
        prune(model, m.export_prune)
        fp32 = to_onnx(model)
        int8 = quantize_int8(fp32)
        report = compare_int8(model, fp32, int8, matrix, targets, m.export_prune)
        loss = report.accuracy_delta if report.metric == "mae" else -report.accuracy_delta
        if report.size_ratio < m.export_min_ratio:
            passed, reason = False, f"size ratio {report.size_ratio:.2f} < {m.export_min_ratio}"
        elif loss > m.export_max_delta:
            passed, reason = False, f"{report.metric} worse by {loss:.4f} > {m.export_max_delta}"
        else:
            passed, reason = True, "size and accuracy within the gate"
        updates = {
            "quantization": report.as_dict(),
            "export_gate": {"passed": passed, "reason": reason},
        }
        return updates, {FP32: fp32, INT8: int8}


def compressing(m: MaintenanceConfig) -> bool:
    """Whether the export measures compressed variants (a student or a ladder level);
    otherwise it is the model's own int8, as before compression existed."""
    return m.export_distill or bool(ladder_levels(m.export_ladder))


def ladder_levels(levels: tuple[float, ...]) -> tuple[float, ...]:
    """The structured pruning levels to measure: those above 0, distinct, ascending."""
    return tuple(sorted({level for level in levels if level > 0}))


def student_plan(teacher: BatchModel, size: float) -> tuple[DistillParams | None, str]:
    """The student to distill: at most ``size`` of the teacher's parameters, or None
    when no student shape is that small (the note says why; the export goes on without
    a student)."""
    outputs = 1 if teacher.classes is None else len(teacher.classes)
    total = parameter_count(len(teacher.feature_names), teacher.params.hidden, outputs)
    try:
        hidden = student_hidden_for(teacher, max_params=int(total * size))
    except ValueError as ex:
        return None, f"no student: {ex} (EDDY_EXPORT_STUDENT_SIZE={size})"
    return DistillParams(hidden=hidden), (
        f"hidden {list(hidden)}: at most {size:g} of the teacher's {total} parameters"
    )


def check_same_interface(teacher: BatchModel, served: BatchModel) -> None:
    """Raise :class:`RegistryError` unless ``served`` takes the teacher's features in
    its order and returns its classes in its order: clients read both from ``model.pt``."""
    if served.feature_names != teacher.feature_names or served.classes != teacher.classes:
        msg = (
            "the served variant's feature names or classes differ from model.pt's; clients "
            "would misread its inputs or outputs: this is a bug in eddy.models.maintain.compress"
        )
        raise RegistryError(msg)


def quantization_of(report: CompressionReport) -> dict[str, Any]:
    """The card's ``quantization`` fields for the served variant (the chosen one, else
    teacher int8) against the teacher fp32, as other code reads them, plus ``variant``."""
    reference = report.row("teacher-fp32")
    served = report.row(report.chosen or TEACHER_INT8)
    return {
        "variant": served.name,
        "fp32_bytes": reference.bytes,
        "int8_bytes": served.bytes,
        "size_ratio": served.size_ratio,
        "fp32_accuracy": reference.quality,
        "int8_accuracy": served.quality,
        "accuracy_delta": served.delta,
        "fp32_batch1_us": reference.batch1_us,
        "int8_batch1_us": served.batch1_us,
        "fp32_batch256_per_s": reference.batch256_per_s,
        "int8_batch256_per_s": served.batch256_per_s,
        "pruned": served.sparsity,
        "metric": report.metric,
    }

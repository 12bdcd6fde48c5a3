"""The exporter: ``model.updated`` → ONNX fp32 → int8 (maybe pruned) → gate → ``model.exported``.

The int8 model is checked against the fp32 one on the version's held-out
examples: size ratio, accuracy (or MAE) delta, batch-1 and batch-256 latency.
The artifacts and the report are always recorded in the version's card; the
event says ``servable: true`` only when the gate passes and the version is the
champion, so serving code never swaps to a model that failed its gate.
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
from eddy.models.batch import BatchModel
from eddy.models.export import compare_int8, prune, quantize_int8, to_onnx
from eddy.models.registry import RegistryError
from eddy.streams.codec import ControlEvent

log = logging.getLogger(__name__)

INT8 = "model.int8.onnx"
FP32 = "model.onnx"


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
            report, artifacts, passed, reason = await asyncio.to_thread(self._export, v)
            report["seconds"] = round(time.monotonic() - started, 3)
            v = await self.registry.add_artifacts(
                model, version, artifacts,
                {"quantization": report, "export_gate": {"passed": passed, "reason": reason}},
            )  # fmt: skip
            self.metrics.results.labels(self.name, "servable" if passed else "not_servable").inc()
            self.metrics.size_ratio.labels(model).set(report["size_ratio"])
            self.metrics.accuracy_delta.labels(model).set(report["accuracy_delta"])
            result = "servable" if passed else f"not servable: {reason}"
            await self.registry.log("export", model, version, f"model.updated {event.id}", result)
        champion = mirror.aliases(model).get("champion") == version
        gate = v.card["export_gate"]
        servable = gate["passed"] and champion
        info = v.card["artifacts"][INT8]
        await self.emit(
            "model.exported",
            {
                "model": model,
                "version": version,
                "artifact": {"uri": f"{model}/{version}/{INT8}", "sha256": info["sha256"],
                             "size_bytes": info["size_bytes"], "format": "onnx-int8"},
                "servable": servable,
                "report": v.card["quantization"] | {"gate": gate, "champion": champion},
            },
            subject=model,
            event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event.source}/{event.id}/exported")),
        )  # fmt: skip

    def _export(self, v: Any) -> tuple[dict[str, Any], dict[str, bytes], bool, str]:
        model = BatchModel.from_bytes(v.artifact("model.pt").read_bytes())
        holdout = orjson.loads(v.artifact("holdout.json").read_bytes())
        matrix = np.asarray(holdout["X"], dtype=np.float32)
        amount = self.settings.maintenance.export_prune
        prune(model, amount)
        fp32 = to_onnx(model)
        int8 = quantize_int8(fp32)
        report = compare_int8(model, fp32, int8, matrix, holdout["y"], amount)
        loss = report.accuracy_delta if report.metric == "mae" else -report.accuracy_delta
        m = self.settings.maintenance
        if report.size_ratio < m.export_min_ratio:
            passed, reason = False, f"size ratio {report.size_ratio:.2f} < {m.export_min_ratio}"
        elif loss > m.export_max_delta:
            passed, reason = False, f"{report.metric} worse by {loss:.4f} > {m.export_max_delta}"
        else:
            passed, reason = True, "size and accuracy within the gate"
        return report.as_dict(), {FP32: fp32, INT8: int8}, passed, reason

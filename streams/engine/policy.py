"""Which model streams a worker learns, and how each one learns.

Streams are either configured (``App.stream`` or ``[streams.<name>]`` tables of a
config file: an allow-list, each with its own model, task, detector and metrics), or,
when none is, any stream name up to ``EDDY_MAX_STREAMS`` learns with the defaults.
Samples of other streams are dead-lettered at the edge (``unknown_stream``,
``too_many_streams``), so memory, checkpoints and metric label sets stay bounded.
"""

from __future__ import annotations

from collections.abc import Mapping

from eddy.models.prequential import StreamSpec
from eddy.streams.kafka.partitioning import remember_name
from eddy.streams.wire.codec import valid_stream_name


class Streams:
    """The stream policy of a worker (see the module docstring)."""

    def __init__(
        self,
        default: StreamSpec,
        configured: Mapping[str, StreamSpec] | None = None,
        max_streams: int = 100,
    ) -> None:
        self.default = default
        self.configured = dict(configured or {})
        self.max_streams = max_streams
        self._admitted: dict[str, StreamSpec] = dict(self.configured)
        for name in self.configured:
            remember_name(name)

    def admit(self, stream: str) -> tuple[StreamSpec | None, str, str]:
        """``(spec, "", "")`` when ``stream`` is learned, else ``(None, reason, message)``."""
        spec = self._admitted.get(stream)
        if spec is not None:
            return spec, "", ""
        if self.configured:
            known = ", ".join(sorted(self.configured)[:20])
            return (
                None,
                "unknown_stream",
                (
                    f"stream {stream!r} is not configured (configured: {known}); add it to the "
                    "app or the config file's [streams] tables to learn it"
                ),
            )
        if len(self._admitted) >= self.max_streams:
            return (
                None,
                "too_many_streams",
                (
                    f"stream {stream!r} would be stream {len(self._admitted) + 1} of this worker, "
                    f"over EDDY_MAX_STREAMS ({self.max_streams}); raise it, or configure streams"
                ),
            )
        self._admitted[stream] = self.default
        remember_name(stream)
        return self.default, "", ""

    def spec(self, stream: str) -> StreamSpec:
        """The spec of a stream (the default for one not admitted in this process: a
        restored learner or a forwarded example of a stream admitted elsewhere)."""
        spec = self._admitted.get(stream)
        if spec is None:
            spec = self.configured.get(stream, self.default)
            if stream not in self._admitted and valid_stream_name(stream):
                self._admitted[stream] = spec
                remember_name(stream)
        return spec

    def names(self) -> list[str]:
        """Streams admitted so far."""
        return list(self._admitted)

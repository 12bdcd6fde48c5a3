"""eddy: streaming online learning on Kafka.

Importing eddy changes nothing in the host process: no logging set-up, no patched
libraries, no threads or event loops. Process-wide tuning happens only in eddy's own
entry points (the ``eddy`` command).
"""

__all__: list[str] = []

"""eddy: streaming online learning on Kafka.

Learn from live Kafka streams with your own River or PyTorch models: predictions when
samples arrive, delayed-label prequential evaluation, drift detection on the error and
on the features, and the maintenance loop (retrain, quantize, hot-swap) around it.

>>> import eddy
>>> from river import linear_model, preprocessing
>>> app = eddy.App(eddy.KafkaConfig("localhost:9092"), prefix="fraud.")
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> _ = app.stream("cards", model=model)
>>> _ = app.stream("merchants", model="hoeffding")
>>> sorted(app.streams)
['cards', 'merchants']

``app.run()`` then runs it against Kafka; :mod:`eddy.testing` runs the same code
without a broker. Importing eddy changes nothing in the host process: no logging
set-up, no patched libraries, no threads or event loops. Process-wide tuning happens
only in eddy's own entry points (the ``eddy`` command).
"""

from importlib.metadata import PackageNotFoundError, version

from eddy.models.catalogue import register_model
from eddy.models.learners import TorchModel
from eddy.models.prequential import StreamSpec
from eddy.streams.app import App
from eddy.streams.settings import (
    JoinConfig,
    KafkaConfig,
    LearningConfig,
    MaintenanceConfig,
    ObservabilityConfig,
    Secret,
    Settings,
    StateConfig,
    TopicConfig,
)

try:
    __version__ = version("eddy")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "App",
    "JoinConfig",
    "KafkaConfig",
    "LearningConfig",
    "MaintenanceConfig",
    "ObservabilityConfig",
    "Secret",
    "Settings",
    "StateConfig",
    "StreamSpec",
    "TopicConfig",
    "TorchModel",
    "__version__",
    "register_model",
]

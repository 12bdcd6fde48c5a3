"""Pure learning logic for eddy: learners, drift detection, metrics, training, export, registry.

Nothing in this package knows about Kafka; agents and consumers call into it.
"""

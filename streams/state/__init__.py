"""State over Kafka: the partition state store (changelog topics, chunked and sealed), and
the model registry's topic.
"""

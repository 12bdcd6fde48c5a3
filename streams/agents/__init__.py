"""The long-running agents, thin adapters from Kafka records to the engine and back: the
worker's consumer group over its partitions, the followers of snapshots and the
registry, the replicas that predict other processes' streams, and the worker process
that wires them.
"""

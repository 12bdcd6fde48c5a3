"""What a worker does with one partition's records, with no Kafka in it: the per-partition
unit, its context and outputs, the stream policy, and the event-time merge of its
inputs. The worker agent (:mod:`eddy.streams.agents.partitions`) feeds it fetched
records; :mod:`eddy.testing` feeds it in-memory ones.
"""

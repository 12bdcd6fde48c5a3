"""Kafka itself: clients (start, stop, read), topic declarations and creation, the batch
sender, the partitioner eddy shares with Java clients and aiokafka, and the embedded
broker.
"""

"""Agents: thin adapters from Kafka records to models/ and back."""

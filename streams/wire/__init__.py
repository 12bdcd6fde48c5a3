"""The wire format: decoding and validating every event against ``schemas/``, encoding what
eddy sends, the dead-letter records, and the keys that sign events and seal state.
"""

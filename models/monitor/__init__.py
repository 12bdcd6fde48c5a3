"""Watching a model stream: drift on the prequential error, and drift in the features and
predictions before any label.
"""

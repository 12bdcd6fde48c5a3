"""The root of eddy's exceptions.

Every error eddy raises on purpose derives from :class:`EddyError`, so callers can
tell eddy's own failures (with a message that says what to do) from bugs.
"""


class EddyError(Exception):
    """Base class of every error eddy raises deliberately."""


class ModelConfigError(EddyError, ValueError):
    """A model, task or detector name (or their combination) eddy does not know."""

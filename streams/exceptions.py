"""Errors of the streaming side: configuration, broker, topics and decoding."""

from eddy.models.exceptions import EddyError


class ConfigError(EddyError):
    """A setting (flag or ``EDDY_*`` variable) has a value eddy cannot use."""


class BrokerError(EddyError):
    """The Kafka broker could not be started, reached or asked."""


class TopicError(EddyError):
    """Topics could not be created, or exist with an incompatible layout."""


class DecodeError(EddyError):
    """An event could not be decoded; it belongs on the dead-letter topic.

    ``reason`` is a short, stable code (bounded set, used as a metric label);
    the message says what was wrong in words.
    """

    reason = "invalid"


class InvalidJSON(DecodeError):
    """The bytes are not one well-formed JSON document (UTF-8, no NaN/Infinity)."""

    reason = "invalid_json"


class SchemaViolation(DecodeError):
    """The JSON is well-formed but does not match the event's schema."""

    reason = "schema"


class MessageTooLarge(DecodeError):
    """The message is larger than eddy's own size cap (``EDDY_MAX_MESSAGE_BYTES``)."""

    reason = "too_large"


class UnsignedEvent(DecodeError):
    """Signing is on (``EDDY_EVENT_SIGNING_KEY``) and a control event carries no signature."""

    reason = "unsigned"


class BadSignature(DecodeError):
    """A control event's HMAC signature does not match its content: forged or altered."""

    reason = "bad_signature"


class TimestampInFuture(DecodeError):
    """An event time lies further ahead of the clock than ``EDDY_MAX_FUTURE_S`` allows."""

    reason = "ts_future"


class UnlearnableLabel(DecodeError):
    """The label does not fit the task (a class a binary model cannot have, a text target)."""

    reason = "unknown_class"

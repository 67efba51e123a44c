"""The one error of the data layer: :class:`DataError`, whose message is one line meant for the user."""

__all__ = ["DataError"]


class DataError(Exception):
    """A bad dataset, path, array or data setting; the message is one line meant for the user."""

"""Exceptions raised by identirep."""


class IdentirepError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""

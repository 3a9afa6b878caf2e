"""The error of one source example that cannot be converted."""


class BadExample(Exception):
    """An example that cannot be converted; the message says why (the writer adds which file)."""

"""The one error type for faults in the user's input, and its message format."""


class UserInputError(ValueError):
    """The user's input is at fault: a flag, a gin binding, a file, a dataset or an address.

    The message names where the fault is, what was expected and what was received, so the fix is obvious.
    """


def expected(where: str, what: str, received: object) -> UserInputError:
    """Returns the error "<where>: expected <what>, received <received!r> (of type <type>)."."""
    return UserInputError(f"{where}: expected {what}, received {received!r} (of type {type(received).__name__}).")

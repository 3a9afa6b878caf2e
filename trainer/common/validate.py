"""Validators for settings, each naming the setting (`where`) in the error it raises."""

import enum
from collections.abc import Sequence
from typing import Any, TypeVar

from trainer.common.errors import UserInputError, expected

EnumT = TypeVar("EnumT", bound=enum.Enum)


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `True` as a count is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(where: str, value: Any) -> int:
    """Returns `value` if it is an int > 0."""
    if not _is_int(value) or value <= 0:
        raise expected(where, "a positive integer", value)
    return value


def non_negative_int(where: str, value: Any) -> int:
    """Returns `value` if it is an int >= 0."""
    if not _is_int(value) or value < 0:
        raise expected(where, "an integer >= 0", value)
    return value


def positive_number(where: str, value: Any) -> float:
    """Returns `value` if it is an int or float > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise expected(where, "a positive number", value)
    return value


def non_negative_number(where: str, value: Any) -> float:
    """Returns `value` if it is an int or float >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise expected(where, "a number >= 0", value)
    return value


def positive_ints(where: str, values: Any) -> tuple[int, ...]:
    """Returns `values` as a tuple if it is a non-empty sequence of ints > 0 (JSON turns tuples into lists)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise expected(where, "a non-empty sequence of positive integers", values)
    return tuple(positive_int(f"{where}[{index}]", value) for index, value in enumerate(values))


def size_pair(where: str, value: Any) -> tuple[int, int]:
    """Returns a (height, width) pair of positive ints."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise expected(where, "(height, width), two positive integers", value)
    return positive_int(f"{where}[0]", value[0]), positive_int(f"{where}[1]", value[1])


def choice(where: str, value: Any, choices: Sequence[str]) -> str:
    """Returns `value` if it is one of `choices`."""
    if value not in choices:
        raise UserInputError(f"{where}: expected one of {{{', '.join(choices)}}}, received {value!r}.")
    return value


def host_port(where: str, value: Any) -> str:
    """Returns `value` if it is a `host:port` address with a port in 1..65535."""
    host, _, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise expected(where, "a host:port address such as 10.0.0.2:2222", value)
    return value


def enum_member(where: str, enum_type: type[EnumT], value: Any) -> EnumT:
    """Returns the member of `enum_type` whose value is `value` (or `value` itself if it is a member)."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choice(where, value, [member.value for member in enum_type])
        raise


def divisible_batch(where: str, global_batch_size: int, num_replicas: int) -> int:
    """Returns the per-replica batch, if `global_batch_size` splits evenly over `num_replicas`."""
    if global_batch_size % num_replicas:
        raise UserInputError(
            f"{where}: expected a multiple of the number of replicas ({num_replicas}), received {global_batch_size}."
        )
    return global_batch_size // num_replicas


class FlagEnum(enum.Enum):
    """An enum whose values a flag accepts; `parse` names the flag when a value is not one of them."""

    @classmethod
    def flag_name(cls) -> str:
        """The flag that takes these values, e.g. `--mode`."""
        raise NotImplementedError

    @classmethod
    def parse(cls, value: "str | FlagEnum") -> "FlagEnum":
        """Returns the member whose value is `value`, or raises UserInputError listing the valid ones."""
        return enum_member(cls.flag_name(), cls, value)

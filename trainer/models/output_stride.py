"""DeepLab's rule for reaching an output stride with dilation instead of striding, shared by the backbones."""

from collections.abc import Sequence

from trainer.common.errors import UserInputError

VALID_OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(owner: str, output_stride: int) -> int:
    """Returns `output_stride` if it is 8, 16 or 32; raises UserInputError naming `owner` otherwise."""
    if isinstance(output_stride, bool) or output_stride not in VALID_OUTPUT_STRIDES:
        raise UserInputError(f"{owner}: expected `output_stride` in {VALID_OUTPUT_STRIDES}, received {output_stride!r}")
    return output_stride


def atrous_schedule(strides: Sequence[int], output_stride: int, input_stride: int = 1) -> list[tuple[int, int]]:
    """(stride, dilation rate) for each layer of a network whose layers stride by `strides` in order.

    Once the accumulated stride (from `input_stride`, that of the layers before) reaches `output_stride`, a
    layer keeps stride 1: the layer whose stride is dropped keeps the current rate (its taps still see adjacent
    pixels) and the layers after it multiply the rate by the dropped stride, as DeepLab's slim backbones do.
    """
    schedule = []
    current_stride, rate = input_stride, 1
    for stride in strides:
        if current_stride >= output_stride:
            schedule.append((1, rate))
            rate *= stride
        else:
            schedule.append((stride, 1))
            current_stride *= stride
    return schedule

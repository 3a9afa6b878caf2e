"""What the trainer records about itself: the `observe.*` gin bindings."""

import dataclasses

import gin

from trainer.common import validate
from trainer.observe import peak


@gin.configurable("observe")
@dataclasses.dataclass(frozen=True)
class ObserveConfig:
    """What the trainer records about itself; bound in gin as `observe.<field>`, built once at the root.

    Attributes:
      peak_flops_per_sec: the peak FLOP/s of one replica (one GPU, one TPU core) that `mfu` divides by,
        e.g. 989e12 for an H100 SXM in bf16 (dense). None measures it once, after the first host loop, with
        `peak.matmul_chain_peak` (the method `make bench` uses): the best rate of chained square matmuls in the
        training's compute dtype on every replica at once, i.e. what this hardware actually reaches on dense
        matmuls (below the data-sheet figure, so MFU reads higher than against it).
      peak_matmul_size: the side of those matmuls (4096 as in `make bench`; a test binds less to save time).
      num_eval_images: validation examples shown as image panels at every evaluation (0: none).
      eval_image_max_size: the longer side, in pixels, each panel is shrunk to at most.
    """

    peak_flops_per_sec: float | None = None
    peak_matmul_size: int = peak.DEFAULT_SIZE
    num_eval_images: int = 4
    eval_image_max_size: int = 512

    def __post_init__(self):
        if self.peak_flops_per_sec is not None:
            validate.positive_number("gin binding observe.peak_flops_per_sec", self.peak_flops_per_sec)
        validate.positive_int("gin binding observe.peak_matmul_size", self.peak_matmul_size)
        validate.non_negative_int("gin binding observe.num_eval_images", self.num_eval_images)
        validate.positive_int("gin binding observe.eval_image_max_size", self.eval_image_max_size)

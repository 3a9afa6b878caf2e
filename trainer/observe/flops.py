"""Dense model FLOPs as the architecture defines them: 2 × multiply-adds of every convolution and matmul.

Counted on the traced forward graph, op by op. A dilated convolution counts as the undilated kernel applied at
every output position (a dilated 3×3 is a 3×3), however it runs: natively (`trainer.models.atrous`), as the 1×1
of its centre tap when its rate reaches past the feature map (counted as the 3×3 it was sliced from), or lowered
to SpaceToBatchND → Conv2D → BatchToSpaceND (depthwise convs on CPU), whose Conv2D runs on a tensor padded up to
a multiple of the rate — there the positions are read from the BatchToSpaceND that crops the result back, where
TensorFlow's profiler over-counts the padding. Batch norm, activations, resizes and pooling are not counted.
"""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras as keras

# Forward + backward (gradients with respect to activations and to weights): the usual 3x of MFU accounting.
TRAIN_FLOPS_PER_FORWARD_FLOP = 3.0
_CONVOLUTIONS = ("Conv2D", "DepthwiseConv2dNative")
_MATMULS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs for one input image, split by op family."""

    convolution: float
    matmul: float

    @property
    def total(self) -> float:
        return self.convolution + self.matmul


def _output_positions(op: tf.Operation) -> int:
    """N × H × W of a convolution's result as the architecture sees it (after undoing space-to-batch)."""
    output = op.outputs[0]
    for consumer in output.consumers():
        if consumer.type == "BatchToSpaceND":
            output = consumer.outputs[0]
            break
    shape = output.shape.as_list()
    if None in shape:
        raise ValueError(f"op {op.name} has a dynamic output shape {shape}; count FLOPs on a fixed input size.")
    return int(np.prod(shape[:-1]))


def _architectural_kernel_shape(op: tf.Operation) -> list[int]:
    """The kernel shape the architecture defines: a 3×3 run as its centre tap (its rate reaches past the map,
    `trainer.models.atrous`) still counts as a 3×3, the kernel the tap was sliced from."""
    kernel = op.inputs[1]
    while kernel.op.type in ("Cast", "Identity"):
        kernel = kernel.op.inputs[0]
    if kernel.op.type == "StridedSlice":
        return kernel.op.inputs[0].shape.as_list()
    return op.inputs[1].shape.as_list()


def _matmul_flops(op: tf.Operation) -> float:
    a, b = (tensor.shape.as_list() for tensor in op.inputs[:2])
    if None in a or None in b:
        raise ValueError(f"op {op.name} has dynamic operand shapes {a}, {b}.")
    adjoint_a = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
    adjoint_b = op.get_attr("transpose_b" if op.type == "MatMul" else "adj_y")
    rows, inner = (a[-1], a[-2]) if adjoint_a else (a[-2], a[-1])
    columns = b[-2] if adjoint_b else b[-1]
    batch = max(int(np.prod(a[:-2])), int(np.prod(b[:-2]))) if len(a) > 2 or len(b) > 2 else 1
    return 2.0 * batch * rows * inner * columns


def graph_flops(graph: tf.Graph) -> FlopCount:
    """Counts convolution and matmul FLOPs of every op in `graph` (static shapes required)."""
    convolution = matmul = 0.0
    for op in graph.get_operations():
        if op.type in _CONVOLUTIONS:
            kernel_height, kernel_width, in_channels, out_or_multiplier = _architectural_kernel_shape(op)
            # Conv2D: out channels; depthwise: channel multiplier, each output channel reads one input channel.
            macs_per_position = kernel_height * kernel_width * in_channels * out_or_multiplier
            convolution += 2.0 * _output_positions(op) * macs_per_position
        elif op.type in _MATMULS:
            matmul += _matmul_flops(op)
    return FlopCount(convolution=convolution, matmul=matmul)


def forward_flops_per_image(model: keras.Model, height: int, width: int) -> FlopCount:
    """Forward-pass FLOPs of `model` for one height×width image (inference graph; training runs the same convs).

    The image has the channels the model was built with (3 unless built on a multi-band dataset).
    """
    forward = tf.function(lambda images: model(images, training=False))
    # A built model's first convolution kernel [kh, kw, in, out] says how many channels its input has.
    kernels = [w for w in model.weights if len(w.shape) == 4]
    channels = int(kernels[0].shape[2]) if kernels else 3
    concrete = forward.get_concrete_function(tf.TensorSpec([1, height, width, channels], tf.float32))
    return graph_flops(concrete.graph)

"""A backbone loaded from a local SavedModel directory, as TF Hub / Kaggle Models publish them.

`tensorflow_hub` is not a dependency: `tf.saved_model.load` reads the directory and the layer registers the
module's variables as its own weights (what `hub.KerasLayer` does), so they train, checkpoint and export with the
rest of the model. Only local paths (or gs://) are read; nothing is downloaded.
"""

import inspect
from collections.abc import Sequence
from typing import Any

import gin
import tensorflow as tf
import tf_keras as keras

from trainer.common.errors import UserInputError
from trainer.models.batch_norm import FixedBatchNorm
from trainer.models.serialization import SERIALIZATION_PACKAGE

# Size of the zero image that measures the output stride when it is not given: TF Hub's usual input size, a
# multiple of 32 so that every power-of-two stride up to 32 divides it.
_PROBE_SIZE = 224


@gin.configurable
@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class HubBackbone(FixedBatchNorm, keras.layers.Layer):
    """A SavedModel feature extractor returning {"low_level", "high_level"} feature maps for the DeepLab head.

    The module must return a dict of feature maps (Model Garden backbones return their endpoints by level, e.g.
    "2" at stride 4 and "4" or "5" at stride 16/32); a module that returns one pooled feature vector cannot be
    used for segmentation. The module's batch norm is fixed when it is traced: `batch_norm.*` settings cannot reach
    it, and `configure_batch_norm` rejects them for a model with this backbone.

    Args:
      path: the SavedModel directory (a TF Hub / Kaggle Models download, extracted), local or gs://.
      low_level_key: the output holding stride-4 features (the decoder's input).
      high_level_key: the output holding the `output_stride` features (ASPP's input).
      signature: None calls the module itself, as TF2 reusable SavedModels are called (`module(images,
        training=...)`); a signature name (e.g. "serving_default") calls that signature instead, which is
        inference only: batch norm stays in inference mode.
      signature_input: the signature's image input name; None: its only input.
      input_range: (low, high) pixel values the module expects; images arrive in [-1, 1]. TF Hub image modules
        take [0, 1].
      output_stride: stride of the high-level features; None measures it on a 224×224 image.
      trainable: whether the module's weights are fine-tuned (and its batch norm runs in training mode).
    """

    def __init__(
        self,
        path: str,
        low_level_key: str,
        high_level_key: str,
        signature: str | None = None,
        signature_input: str | None = None,
        input_range: Sequence[float] = (0.0, 1.0),
        output_stride: int | None = None,
        trainable: bool = True,
        name: str = "hub_backbone",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, trainable=trainable, **kwargs)
        owner = type(self).__name__
        if not isinstance(path, str) or not tf.io.gfile.isdir(path):
            raise UserInputError(
                f"gin binding {owner}.path: expected a local directory holding a SavedModel (a TF Hub / Kaggle "
                f"Models download, extracted), received {path!r}."
            )
        if len(tuple(input_range)) != 2 or not float(input_range[0]) < float(input_range[1]):
            raise UserInputError(
                f"gin binding {owner}.input_range: expected (low, high) with low < high, received {input_range!r}."
            )
        self.path = path
        self.low_level_key = low_level_key
        self.high_level_key = high_level_key
        self.signature = signature
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self._module = tf.saved_model.load(path)
        if signature is None:
            self._function = self._module
            self.signature_input = signature_input
            self._accepts_training = "training" in inspect.signature(self._module.__call__).parameters
        else:
            signatures = getattr(self._module, "signatures", {})
            if signature not in signatures:
                raise UserInputError(
                    f"gin binding {owner}.signature: expected one of the signatures of {path} "
                    f"({sorted(signatures)}), received {signature!r}."
                )
            self._function = signatures[signature]
            inputs = sorted(self._function.structured_input_signature[1])
            if signature_input is None and len(inputs) != 1:
                raise UserInputError(
                    f"gin binding {owner}.signature_input: expected one of {inputs} (signature {signature!r} of "
                    f"{path} has several inputs), received None."
                )
            self.signature_input = signature_input or inputs[0]
            self._accepts_training = False
        self._register_module_variables()
        self.output_stride = output_stride if output_stride is not None else self._measure_output_stride()

    def _register_module_variables(self) -> None:
        """Makes the module's variables this layer's weights, trainable as the module marks them."""
        variables = list(getattr(self._function, "variables", None) or getattr(self._module, "variables", []))
        trainable_ids = {id(v) for v in getattr(self._function, "trainable_variables", []) or []}
        if not trainable_ids:
            trainable_ids = {id(v) for v in variables if v.trainable}
        for index, variable in enumerate(variables):
            self.add_weight(
                # Prefixed by position: names restored from a SavedModel need not be unique.
                name=f"{index:04d}_{variable.name.split(':')[0]}",
                shape=variable.shape,
                dtype=variable.dtype,
                trainable=id(variable) in trainable_ids,
                experimental_autocast=False,
                getter=lambda *_, variable=variable, **__: variable,
            )

    def _measure_output_stride(self) -> int:
        features = self._features(tf.zeros([1, _PROBE_SIZE, _PROBE_SIZE, 3]), training=False)
        height = features["high_level"].shape[1]
        if not height or _PROBE_SIZE % height:
            raise UserInputError(
                f"gin binding {type(self).__name__}.output_stride: could not measure it ({_PROBE_SIZE}-pixel input, "
                f"{height}-pixel '{self.high_level_key}' features); expected it to be set, received None."
            )
        return _PROBE_SIZE // height

    def _features(self, images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        low, high = self.input_range
        images = (tf.cast(images, tf.float32) + 1.0) * ((high - low) / 2.0) + low
        if self.signature is not None:
            outputs = self._function(**{self.signature_input: images})
        elif self._accepts_training:
            outputs = self._function(images, training=training)
        else:
            outputs = self._function(images)
        if not isinstance(outputs, dict):
            received = f"one tensor of shape {outputs.shape}" if tf.is_tensor(outputs) else type(outputs).__name__
            raise UserInputError(
                f"{type(self).__name__}({self.path!r}): expected the module to return a dict of feature maps, "
                f"received {received}; a module that returns a pooled feature vector has no feature maps to "
                "segment with."
            )
        missing = [key for key in (self.low_level_key, self.high_level_key) if key not in outputs]
        if missing:
            raise UserInputError(
                f"gin bindings {type(self).__name__}.low_level_key/high_level_key: expected keys among the "
                f"module's outputs {sorted(outputs)}, received {missing}."
            )
        return {"low_level": outputs[self.low_level_key], "high_level": outputs[self.high_level_key]}

    def call(self, images: tf.Tensor, training: bool | None = None) -> dict[str, tf.Tensor]:
        """Returns {"low_level", "high_level"} features of NHWC `images` in [-1, 1]."""
        return self._features(images, training=bool(training) and self.trainable)

    def get_config(self) -> dict[str, Any]:
        """Returns the constructor arguments (with the measured output stride)."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "path": self.path,
            "low_level_key": self.low_level_key,
            "high_level_key": self.high_level_key,
            "signature": self.signature,
            "signature_input": self.signature_input,
            "input_range": self.input_range,
            "output_stride": self.output_stride,
        }

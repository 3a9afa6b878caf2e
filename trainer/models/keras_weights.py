"""ImageNet weights of a backbone's Keras Applications twin: which `.h5` file, fetched into a cache, hash-checked.

Nothing here touches the network unless `fetch` is called, which happens only for `init.keras_weights`. Names,
origins and hashes are those tf_keras' applications download (their `include_top=False` files).
"""

import dataclasses
import os
import tempfile

import tensorflow as tf
import tf_keras as keras
from absl import logging

from trainer.common.errors import UserInputError
from trainer.models.convnext import VARIANTS as CONVNEXT_VARIANTS
from trainer.models.convnext import ConvNeXt
from trainer.models.efficientnet_v2 import VARIANTS as EFFICIENTNET_V2_VARIANTS
from trainer.models.efficientnet_v2 import EfficientNetV2
from trainer.models.keras_xception import KerasXception
from trainer.models.mobilenet_v3 import MobileNetV3
from trainer.models.resnet import ResNet

KERAS_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"
CACHE_SUBDIR = "models"
# {file name: hash} of the include_top=False files, as tf_keras publishes them (md5, or sha256 for ConvNeXt).
NO_TOP_HASHES = {
    "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet/resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5": "88cf7a10940856eca736dc7b7e228a21",
    "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5": "b0042744bf5b25fce3cb969f33bebb97",
    "efficientnet_v2/efficientnetv2-b0_notop.h5": "893217f2bb855e2983157299931e43ff",
    "efficientnet_v2/efficientnetv2-b1_notop.h5": "0e80663031ca32d657f9caa404b6ec37",
    "efficientnet_v2/efficientnetv2-b2_notop.h5": "1dfe2e7a5d45b6632553a8961ea609eb",
    "efficientnet_v2/efficientnetv2-b3_notop.h5": "f6abf7b5849ac99a89b50dd3fd532856",
    "efficientnet_v2/efficientnetv2-s_notop.h5": "af0682fb74e8c54910f2d4393339c070",
    "efficientnet_v2/efficientnetv2-m_notop.h5": "1b8dc055df72dde80d614482840fe342",
    "mobilenet_v3/weights_mobilenet_v3_large_224_0.75_float_no_top_v2.h5": "40af19a13ebea4e2ee0c676887f69a2e",
    "mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5": "07fb09a5933dd0c8eaafa16978110389",
    "mobilenet_v3/weights_mobilenet_v3_large_minimalistic_224_1.0_float_no_top_v2.h5": (
        "ec5221f64a2f6d1ef965a614bdae7973"
    ),
    "mobilenet_v3/weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5": "ebdb5cc8e0b497cd13a7c275d475c819",
    "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "mobilenet_v3/weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5": (
        "cde8136e733e811080d9fcd8a252f7e4"
    ),
    "convnext/convnext_tiny_notop.h5": "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    "convnext/convnext_small_notop.h5": "6fc8009faa2f00c1c1dfce59feea9b0745eb260a7dd11bee65c8e20843da6eab",
    "convnext/convnext_base_notop.h5": "40a20c5548a5e9202f69735ecc06c990e6b7c9d2de39f0361e27baeb24cb7c45",
}
RESNET_DEPTHS = {(3, 4, 6, 3): "resnet50", (3, 4, 23, 3): "resnet101"}


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file to fetch: its name in the cache, where it is downloaded from, and its md5 or sha256."""

    file_name: str
    origin: str
    file_hash: str


def _published(path: str) -> WeightsFile:
    return WeightsFile(os.path.basename(path), KERAS_APPLICATIONS + path, NO_TOP_HASHES[path])


def _keras_path(backbone: keras.Model) -> str | None:
    """The published file's path under KERAS_APPLICATIONS for this configuration, None if Keras has none."""
    if isinstance(backbone, ResNet) and backbone.stem == "v1" and backbone.base_filters == 64:
        name = RESNET_DEPTHS.get(tuple(backbone.block_depths))
        return name and f"resnet/{name}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if isinstance(backbone, KerasXception) and (backbone.width_multiplier, backbone.middle_flow_blocks) == (1.0, 8):
        return "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if isinstance(backbone, EfficientNetV2):
        width, depth, _ = EFFICIENTNET_V2_VARIANTS[backbone.variant]
        if (backbone.width_coefficient, backbone.depth_coefficient) == (width, depth):
            return f"efficientnet_v2/efficientnetv2-{backbone.variant}_notop.h5"
    if isinstance(backbone, ConvNeXt):
        if (tuple(backbone.depths), tuple(backbone.projection_dims)) == CONVNEXT_VARIANTS[backbone.variant]:
            return f"convnext/convnext_{backbone.variant}_notop.h5"
    if isinstance(backbone, MobileNetV3):
        model = f"{backbone.variant}{'_minimalistic' if backbone.minimalistic else ''}_224_{backbone.width_multiplier}"
        return f"mobilenet_v3/weights_mobilenet_v3_{model}_float_no_top_v2.h5"
    return None


def imagenet_weights_file(backbone: keras.Model) -> WeightsFile:
    """The Keras Applications ImageNet `.h5` (without top) whose layers `backbone` mirrors.

    Raises:
      UserInputError: Keras publishes no such file with a hash for this backbone and configuration.
    """
    path = _keras_path(backbone)
    if path not in NO_TOP_HASHES:
        raise UserInputError(
            f"gin binding init.keras_weights = 'imagenet': expected a backbone whose Keras Applications twin has "
            f"published ImageNet weights (ResNet50/101 with the v1 stem, EfficientNetV2 B0-B3/S/M, MobileNetV3 "
            f"Small/Large at width 1.0 or 0.75, ConvNeXt Tiny/Small/Base, KerasXception), received "
            f"{type(backbone).__name__} {backbone.name!r} configured otherwise; set init.keras_h5 to a local file"
        )
    return _published(path)


def fetch(weights: WeightsFile, cache_dir: str | None = None) -> str:
    """Returns a local path of `weights`, downloaded through `keras.utils.get_file` unless cached, hash-checked.

    Args:
      weights: the file, its origin and hash.
      cache_dir: the cache (its `models/` subdirectory holds the file); None is Keras' `~/.keras`. A remote one
        (`gs://...`) is read and filled through tf.io.gfile, the file being checked in a local copy.

    Raises:
      UserInputError: the download fails (one line naming the URL and `init.keras_h5`) or the file's hash is not
        the published one (naming the file).
    """
    if cache_dir and "://" in cache_dir:
        return _fetch_through_remote_cache(weights, cache_dir)
    return _get_file(weights, cache_dir)


def _get_file(weights: WeightsFile, cache_dir: str | None) -> str:
    try:
        return keras.utils.get_file(
            weights.file_name,
            weights.origin,
            file_hash=weights.file_hash,
            cache_dir=cache_dir,
            cache_subdir=CACHE_SUBDIR,
        )
    except ValueError as error:
        raise UserInputError(
            f"init.keras_weights: {weights.file_name} from {weights.origin} does not have the published hash "
            f"{weights.file_hash} ({error}); remove it from the cache to download it again"
        ) from error
    except Exception as error:  # get_file raises a bare Exception for URL and HTTP errors
        reason = " ".join(str(error).split())
        raise UserInputError(
            f"init.keras_weights: cannot download {weights.origin} ({reason}); on a machine without network access, "
            f"download it elsewhere and set init.keras_h5 to its local path instead"
        ) from error


def _fetch_through_remote_cache(weights: WeightsFile, cache_dir: str) -> str:
    """Copies a cached file from the remote cache (if there) to a local one, checks it there, fills the remote."""
    remote = f"{cache_dir.rstrip('/')}/{CACHE_SUBDIR}/{weights.file_name}"
    local_cache = os.path.join(tempfile.gettempdir(), "deeplab_keras_weights")
    local = os.path.join(local_cache, CACHE_SUBDIR, weights.file_name)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    copied_at = None
    if tf.io.gfile.exists(remote):
        tf.io.gfile.copy(remote, local, overwrite=True)
        copied_at = os.path.getmtime(local)
    path = _get_file(weights, local_cache)  # re-downloads a cached copy whose hash is wrong
    if copied_at is None or os.path.getmtime(path) != copied_at:
        tf.io.gfile.makedirs(os.path.dirname(remote))
        tf.io.gfile.copy(path, remote, overwrite=True)
        logging.info("Cached %s in %s.", weights.file_name, remote)
    return path

"""MobileNetV2 (Keras's ``keras.applications.mobilenet_v2``): the model, ``preprocess_input``
('tf' mode: scaled to [-1, 1]) and ``decode_predictions``.

Layer names, order, shapes and parameter counts are Keras 3.15's (tests/test_applications.py
compares them with fixtures Keras wrote); the model's default name is Keras's
``mobilenetv2_{alpha:0.2f}_{rows}``.
"""
from __future__ import annotations

import numbers
import warnings

from .. import layers
from . import imagenet_utils

BASE_WEIGHT_PATH = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                    "mobilenet_v2/")
#: The alphas and square input sizes Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = (0.35, 0.50, 0.75, 1.0, 1.3, 1.4)
IMAGENET_ROWS = (96, 128, 160, 192, 224)


def _weights_file(include_top, alpha, rows):
    # Keras publishes no checksum for these files (file_hash=None in its source): none is
    # checked here either.
    if include_top:
        fname = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}.h5"
    else:
        fname = (f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}"
                 f"_no_top.h5")
    return fname, BASE_WEIGHT_PATH + fname, None


def _make_divisible(v, divisor, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _bn(name):
    return layers.BatchNormalization(axis=-1, epsilon=1e-3, momentum=0.999, name=name)


def _inverted_res_block(inputs, expansion, stride, alpha, filters, block_id):
    """Keras's inverted residual block (expand 1x1, depthwise 3x3, project 1x1)."""
    in_channels = inputs.shape[-1]
    pointwise_filters = _make_divisible(int(filters * alpha), 8)
    x = inputs
    prefix = f"block_{block_id}_"
    if block_id:
        x = layers.Conv2D(expansion * in_channels, kernel_size=1, padding="same",
                          use_bias=False, activation=None, name=f"{prefix}expand")(x)
        x = _bn(f"{prefix}expand_BN")(x)
        x = layers.ReLU(6.0, name=f"{prefix}expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    if stride == 2:
        x = layers.ZeroPadding2D(padding=imagenet_utils.correct_pad(x.shape[1:3], 3),
                                 name=f"{prefix}pad")(x)
    x = layers.DepthwiseConv2D(kernel_size=3, strides=stride, activation=None, use_bias=False,
                               padding="same" if stride == 1 else "valid",
                               name=f"{prefix}depthwise")(x)
    x = _bn(f"{prefix}depthwise_BN")(x)
    x = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(x)
    x = layers.Conv2D(pointwise_filters, kernel_size=1, padding="same", use_bias=False,
                      activation=None, name=f"{prefix}project")(x)
    x = _bn(f"{prefix}project_BN")(x)
    if in_channels == pointwise_filters and stride == 1:
        return layers.Add(name=f"{prefix}add")([inputs, x])
    return x


def MobileNetV2(input_shape=None, alpha=1.0, include_top=True, weights="imagenet",  # noqa: N802
                input_tensor=None, pooling=None, classes=1000,
                classifier_activation="softmax", name=None):
    """MobileNetV2 (Sandler et al., CVPR 2018) with Keras's signature (``input_shape`` first)
    and layer names.

    Args:
        alpha: width multiplier (filters of every layer times ``alpha``, rounded to a
            multiple of 8); ImageNet weights exist for 0.35, 0.5, 0.75, 1.0, 1.3 and 1.4.
        Others as :func:`fastcnn.applications.VGG16`; the input is at least 32x32, and the
            default size is the input's when it is square and one of 96, 128, 160, 192, 224
            (else 224), as in Keras.
    """
    imagenet_utils.check_weights_argument(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    if include_top:   # Keras checks this after building the layers; the outcome is the same
        imagenet_utils.validate_activation(classifier_activation, weights)
    if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
            or not float(alpha) > 0):
        raise ValueError(f"alpha must be a float > 0, got {alpha!r}")

    if input_shape is not None and input_tensor is not None:
        if tuple(input_tensor.shape[2:3]) != tuple(input_shape[1:2]):
            raise ValueError(
                "input_tensor.shape[2] must equal input_shape[1]; Received "
                f"`input_tensor.shape={tuple(input_tensor.shape)}`, "
                f"`input_shape={input_shape}`")
    shape_for_default = input_shape
    if input_shape is None and input_tensor is not None:
        shape_for_default = tuple(input_tensor.shape[1:])
    if shape_for_default is None:
        default_size = 224
    else:
        rows, cols = shape_for_default[0], shape_for_default[1]
        default_size = rows if rows == cols and rows in IMAGENET_ROWS else 224

    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=default_size, min_size=32, data_format=None,
        require_flatten=include_top, weights=weights)
    if input_tensor is not None and input_shape[0] is None:
        input_shape = tuple(input_tensor.shape[1:])
    rows, cols = input_shape[0], input_shape[1]

    if weights == "imagenet":
        if alpha not in [0.35, 0.50, 0.75, 1.0, 1.3, 1.4]:
            raise ValueError(
                "If imagenet weights are being loaded, alpha must be one of `0.35`, `0.50`, "
                f"`0.75`, `1.0`, `1.3` or `1.4` only; Received `alpha={alpha}`")
        if rows != cols or rows not in IMAGENET_ROWS:
            rows = 224
            warnings.warn(
                "`input_shape` is undefined or non-square, or `rows` is not in "
                "[96, 128, 160, 192, 224]. Weights for input shape (224, 224) will be "
                "loaded as the default.", stacklevel=2)

    input_shape = imagenet_utils.check_input_shape(input_shape, "MobileNetV2")
    img_input = imagenet_utils.input_tensor_or_new(input_tensor, input_shape)

    first_block_filters = _make_divisible(32 * alpha, 8)
    x = layers.Conv2D(first_block_filters, kernel_size=3, strides=(2, 2), padding="same",
                      use_bias=False, name="Conv1")(img_input)
    x = _bn("bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    block_id = 0
    for filters, stride, expansion, repeats in ((16, 1, 1, 1), (24, 2, 6, 2), (32, 2, 6, 3),
                                                (64, 2, 6, 4), (96, 1, 6, 3), (160, 2, 6, 3),
                                                (320, 1, 6, 1)):
        for r in range(repeats):
            x = _inverted_res_block(x, filters=filters, alpha=alpha,
                                    stride=stride if r == 0 else 1, expansion=expansion,
                                    block_id=block_id)
            block_id += 1

    # No alpha on the last conv below 1 (as in the paper); above 1 it grows.
    last_block_filters = _make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = layers.Conv2D(last_block_filters, kernel_size=1, use_bias=False, name="Conv_1")(x)
    x = _bn("Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D()(x)

    if name is None:
        name = f"mobilenetv2_{alpha:0.2f}_{rows}"
    model = imagenet_utils.build_model(img_input, input_tensor, x, name)
    return imagenet_utils.load_weights(model, weights, *_weights_file(include_top, alpha, rows))


def preprocess_input(x, data_format=None):
    """Keras's ``mobilenet_v2.preprocess_input``: 'tf' mode (``x / 127.5 - 1``, so pixels
    in [0, 255] map to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5, class_index=None):
    """The ``top`` ImageNet classes of each prediction: see
    :func:`fastcnn.applications.imagenet_utils.decode_predictions`."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index=class_index)

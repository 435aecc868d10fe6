"""ResNet50 (Keras's ``keras.applications.resnet50``): the model, ``preprocess_input``
('caffe' mode) and ``decode_predictions``.

Layer names, order, shapes and parameter counts are Keras 3.15's (tests/test_applications.py
compares them with fixtures Keras wrote).
"""
from __future__ import annotations

from .. import layers
from . import imagenet_utils

BASE_WEIGHTS_PATH = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
#: MD5 from Keras's source: (with top, without top).
WEIGHTS_HASHES = {"resnet50": ("2cb95161c43110f7111970584f804107",
                               "4d473c1dd8becc155b73f8504c6f6626")}


def _weights_file(include_top):
    if include_top:
        fname = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
        md5 = WEIGHTS_HASHES["resnet50"][0]
    else:
        fname = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        md5 = WEIGHTS_HASHES["resnet50"][1]
    return fname, BASE_WEIGHTS_PATH + fname, md5


def _bn(name):
    return layers.BatchNormalization(axis=-1, epsilon=1.001e-5, name=name)


def residual_block_v1(x, filters, kernel_size=3, stride=1, conv_shortcut=True, name=None):
    """Keras's ``residual_block_v1`` (bottleneck block, post-activation)."""
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _bn(f"{name}_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _bn(f"{name}_1_bn")(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.Conv2D(filters, kernel_size, padding="same", name=f"{name}_2_conv")(x)
    x = _bn(f"{name}_2_bn")(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = _bn(f"{name}_3_bn")(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stack_residual_blocks_v1(x, filters, blocks, stride1=2, name=None):
    x = residual_block_v1(x, filters, stride=stride1, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = residual_block_v1(x, filters, conv_shortcut=False, name=f"{name}_block{i}")
    return x


def ResNet50(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,  # noqa: N802
             pooling=None, classes=1000, classifier_activation="softmax", name="resnet50"):
    """ResNet50 (He et al., CVPR 2016) with Keras's signature and layer names.

    Arguments as :func:`fastcnn.applications.VGG16` (input at least 32x32; default
    224x224). BatchNormalization uses epsilon 1.001e-5 as Keras's.
    """
    imagenet_utils.check_weights_argument(weights, include_top, classes)
    imagenet_utils.check_pooling(pooling)
    if include_top:   # Keras checks this after building the layers; the outcome is the same
        imagenet_utils.validate_activation(classifier_activation, weights)
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=224, min_size=32, data_format=None,
        require_flatten=include_top, weights=weights)
    if input_tensor is not None and input_shape[0] is None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = imagenet_utils.check_input_shape(input_shape, "ResNet50")
    img_input = imagenet_utils.input_tensor_or_new(input_tensor, input_shape)

    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(img_input)
    x = layers.Conv2D(64, 7, strides=2, use_bias=True, name="conv1_conv")(x)
    x = _bn("conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    x = stack_residual_blocks_v1(x, 64, 3, stride1=1, name="conv2")
    x = stack_residual_blocks_v1(x, 128, 4, name="conv3")
    x = stack_residual_blocks_v1(x, 256, 6, name="conv4")
    x = stack_residual_blocks_v1(x, 512, 3, name="conv5")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = imagenet_utils.build_model(img_input, input_tensor, x, name)
    return imagenet_utils.load_weights(model, weights, *_weights_file(include_top))


def preprocess_input(x, data_format=None):
    """Keras's ``resnet50.preprocess_input``: 'caffe' mode (RGB -> BGR, ImageNet mean pixel
    subtracted, no scaling)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


def decode_predictions(preds, top=5, class_index=None):
    """The ``top`` ImageNet classes of each prediction: see
    :func:`fastcnn.applications.imagenet_utils.decode_predictions`."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index=class_index)

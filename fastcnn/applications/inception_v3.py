"""InceptionV3 (Keras's ``keras.applications.inception_v3``): the model,
``preprocess_input`` ('tf' mode: scaled to [-1, 1]) and ``decode_predictions``.

Layer names, order, shapes and parameter counts are Keras 3.15's (tests/test_applications.py
compares them with fixtures Keras wrote). Most layers are unnamed in Keras's source and get
automatic names ('conv2d', 'conv2d_1', ..., 'batch_normalization_93', 'activation_93'):
fastcnn's automatic names follow the same rule (one counter per prefix, for the session), so
a model built in a fresh session (``fastcnn.utils.clear_session()``, or no model built
before) has exactly Keras's names; the named ones ('mixed0'..'mixed10', 'mixed9_0',
'avg_pool', 'predictions') are fixed.
"""
from __future__ import annotations

from .. import layers
from . import imagenet_utils

WEIGHTS_PATH = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels.h5")
WEIGHTS_PATH_NO_TOP = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                       "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")
WEIGHTS_FILES = {
    True: ("inception_v3_weights_tf_dim_ordering_tf_kernels.h5", WEIGHTS_PATH,
           "9a0d58056eeedaa3f26cb7ebd46da564"),
    False: ("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", WEIGHTS_PATH_NO_TOP,
            "bcbd6486424b2319ff4ef7d526e38f63"),
}


def conv2d_bn(x, filters, num_row, num_col, padding="same", strides=(1, 1), name=None):
    """Keras's ``conv2d_bn``: Conv2D (no bias) + BatchNormalization(scale=False) + relu."""
    bn_name = None if name is None else f"{name}_bn"
    conv_name = None if name is None else f"{name}_conv"
    x = layers.Conv2D(filters, (num_row, num_col), strides=strides, padding=padding,
                      use_bias=False, name=conv_name)(x)
    x = layers.BatchNormalization(axis=-1, scale=False, name=bn_name)(x)
    return layers.Activation("relu", name=name)(x)


def _avg3(x):
    return layers.AveragePooling2D((3, 3), strides=(1, 1), padding="same")(x)


def InceptionV3(include_top=True, weights="imagenet", input_tensor=None,  # noqa: N802
                input_shape=None, pooling=None, classes=1000,
                classifier_activation="softmax", name="inception_v3"):
    """InceptionV3 (Szegedy et al., CVPR 2016) with Keras's signature and layer names.

    Arguments as :func:`fastcnn.applications.VGG16`; the input is at least 75x75 (default
    299x299). ``get_layer('mixed7')`` is the 17x17x768 block output the transfer-learning
    tutorials cut at.
    """
    imagenet_utils.check_weights_argument(weights, include_top, classes,
                                          inception_wording=True)
    imagenet_utils.check_pooling(pooling)
    if include_top:   # Keras checks this after building the layers; the outcome is the same
        imagenet_utils.validate_activation(classifier_activation, weights)
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape, default_size=299, min_size=75, data_format=None,
        require_flatten=include_top, weights=weights)
    if input_tensor is not None and input_shape[0] is None:
        input_shape = tuple(input_tensor.shape[1:])
    input_shape = imagenet_utils.check_input_shape(input_shape, "InceptionV3")
    img_input = imagenet_utils.input_tensor_or_new(input_tensor, input_shape)
    concat = layers.concatenate

    x = conv2d_bn(img_input, 32, 3, 3, strides=(2, 2), padding="valid")
    x = conv2d_bn(x, 32, 3, 3, padding="valid")
    x = conv2d_bn(x, 64, 3, 3)
    x = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)

    x = conv2d_bn(x, 80, 1, 1, padding="valid")
    x = conv2d_bn(x, 192, 3, 3, padding="valid")
    x = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)

    # mixed 0, 1, 2: 35 x 35 x 256 / 288 / 288
    for i, pool_filters in enumerate((32, 64, 64)):
        branch1x1 = conv2d_bn(x, 64, 1, 1)
        branch5x5 = conv2d_bn(x, 48, 1, 1)
        branch5x5 = conv2d_bn(branch5x5, 64, 5, 5)
        branch3x3dbl = conv2d_bn(x, 64, 1, 1)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
        branch_pool = conv2d_bn(_avg3(x), pool_filters, 1, 1)
        x = concat([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1,
                   name=f"mixed{i}")

    # mixed 3: 17 x 17 x 768
    branch3x3 = conv2d_bn(x, 384, 3, 3, strides=(2, 2), padding="valid")
    branch3x3dbl = conv2d_bn(x, 64, 1, 1)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3)
    branch3x3dbl = conv2d_bn(branch3x3dbl, 96, 3, 3, strides=(2, 2), padding="valid")
    branch_pool = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = concat([branch3x3, branch3x3dbl, branch_pool], axis=-1, name="mixed3")

    # mixed 4, 5, 6, 7: 17 x 17 x 768
    for i, width in enumerate((128, 160, 160, 192)):
        branch1x1 = conv2d_bn(x, 192, 1, 1)
        branch7x7 = conv2d_bn(x, width, 1, 1)
        branch7x7 = conv2d_bn(branch7x7, width, 1, 7)
        branch7x7 = conv2d_bn(branch7x7, 192, 7, 1)
        branch7x7dbl = conv2d_bn(x, width, 1, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 7, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 1, 7)
        branch7x7dbl = conv2d_bn(branch7x7dbl, width, 7, 1)
        branch7x7dbl = conv2d_bn(branch7x7dbl, 192, 1, 7)
        branch_pool = conv2d_bn(_avg3(x), 192, 1, 1)
        x = concat([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1,
                   name=f"mixed{4 + i}")

    # mixed 8: 8 x 8 x 1280
    branch3x3 = conv2d_bn(x, 192, 1, 1)
    branch3x3 = conv2d_bn(branch3x3, 320, 3, 3, strides=(2, 2), padding="valid")
    branch7x7x3 = conv2d_bn(x, 192, 1, 1)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 1, 7)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 7, 1)
    branch7x7x3 = conv2d_bn(branch7x7x3, 192, 3, 3, strides=(2, 2), padding="valid")
    branch_pool = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = concat([branch3x3, branch7x7x3, branch_pool], axis=-1, name="mixed8")

    # mixed 9, 10: 8 x 8 x 2048
    for i in range(2):
        branch1x1 = conv2d_bn(x, 320, 1, 1)
        branch3x3 = conv2d_bn(x, 384, 1, 1)
        branch3x3_1 = conv2d_bn(branch3x3, 384, 1, 3)
        branch3x3_2 = conv2d_bn(branch3x3, 384, 3, 1)
        branch3x3 = concat([branch3x3_1, branch3x3_2], axis=-1, name=f"mixed9_{i}")
        branch3x3dbl = conv2d_bn(x, 448, 1, 1)
        branch3x3dbl = conv2d_bn(branch3x3dbl, 384, 3, 3)
        branch3x3dbl_1 = conv2d_bn(branch3x3dbl, 384, 1, 3)
        branch3x3dbl_2 = conv2d_bn(branch3x3dbl, 384, 3, 1)
        branch3x3dbl = concat([branch3x3dbl_1, branch3x3dbl_2], axis=-1)
        branch_pool = conv2d_bn(_avg3(x), 192, 1, 1)
        x = concat([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1,
                   name=f"mixed{9 + i}")

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D()(x)

    model = imagenet_utils.build_model(img_input, input_tensor, x, name)
    return imagenet_utils.load_weights(model, weights, *WEIGHTS_FILES[bool(include_top)])


def preprocess_input(x, data_format=None):
    """Keras's ``inception_v3.preprocess_input``: 'tf' mode (``x / 127.5 - 1``, so pixels in
    [0, 255] map to [-1, 1])."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


def decode_predictions(preds, top=5, class_index=None):
    """The ``top`` ImageNet classes of each prediction: see
    :func:`fastcnn.applications.imagenet_utils.decode_predictions`."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index=class_index)

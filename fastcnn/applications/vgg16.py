"""VGG16 (Keras's ``keras.applications.vgg16``): the model, ``preprocess_input`` ('caffe'
mode: RGB -> BGR, ImageNet mean pixel subtracted) and ``decode_predictions``.

Layer names, order, shapes and parameter counts are Keras 3.15's (tests/test_applications.py
compares them with fixtures Keras wrote).
"""
from __future__ import annotations

from .. import layers
from . import imagenet_utils

WEIGHTS_PATH = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels.h5")
WEIGHTS_PATH_NO_TOP = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                       "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
#: (file name, URL, MD5 from Keras's source) for include_top True / False.
WEIGHTS_FILES = {
    True: ("vgg16_weights_tf_dim_ordering_tf_kernels.h5", WEIGHTS_PATH,
           "64373286793e3c8b2b4e3219cbf3544b"),
    False: ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", WEIGHTS_PATH_NO_TOP,
            "6d6bbae143d832006294945121d1f1fc"),
}


def VGG16(include_top=True, weights="imagenet", input_tensor=None, input_shape=None,  # noqa: N802
          pooling=None, classes=1000, classifier_activation="softmax", name="vgg16"):
    """VGG16 (Simonyan & Zisserman, ICLR 2015) with Keras's signature and layer names.

    Args:
        include_top: the three fully connected layers at the top ('fc1', 'fc2',
            'predictions'); then the input must be (224, 224, 3) with ImageNet weights.
        weights: None (random initialisation), 'imagenet' (Keras's published file: see
            :func:`fastcnn.applications.imagenet_utils.get_file` for where it is looked for
            and downloaded to), or the path of a weights file (``model.load_weights``).
        input_tensor: a symbolic tensor (``fastcnn.Input``) to use as the image input.
        input_shape: (height, width, channels), height and width >= 32; without the top
            (None, None, 3), images of any size, is the default (Keras's).
        pooling: without the top, None (4-D output), 'avg' or 'max' (global pooling).
        classes: number of classes of the top layer (1000 with ImageNet weights).
        classifier_activation: activation of the top layer (None gives logits).
        name: the model's name.
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
    input_shape = imagenet_utils.check_input_shape(input_shape, "VGG16")
    img_input = imagenet_utils.input_tensor_or_new(input_tensor, input_shape)

    x = img_input
    for block, (filters, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3),
                                              (512, 3)), start=1):
        for i in range(1, convs + 1):
            x = layers.Conv2D(filters, (3, 3), activation="relu", padding="same",
                              name=f"block{block}_conv{i}")(x)
        x = layers.MaxPooling2D((2, 2), strides=(2, 2), name=f"block{block}_pool")(x)

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(4096, activation="relu", name="fc1")(x)
        x = layers.Dense(4096, activation="relu", name="fc2")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D()(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D()(x)

    model = imagenet_utils.build_model(img_input, input_tensor, x, name)
    return imagenet_utils.load_weights(model, weights, *WEIGHTS_FILES[bool(include_top)])


def preprocess_input(x, data_format=None):
    """Keras's ``vgg16.preprocess_input``: 'caffe' mode (RGB -> BGR, then the ImageNet mean
    pixel (103.939, 116.779, 123.68) subtracted per BGR channel, no scaling)."""
    return imagenet_utils.preprocess_input(x, data_format=data_format, mode="caffe")


def decode_predictions(preds, top=5, class_index=None):
    """The ``top`` ImageNet classes of each prediction: see
    :func:`fastcnn.applications.imagenet_utils.decode_predictions`."""
    return imagenet_utils.decode_predictions(preds, top=top, class_index=class_index)

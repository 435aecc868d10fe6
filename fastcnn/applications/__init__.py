"""Keras's classic ImageNet architectures (``keras.applications``): VGG16, ResNet50,
MobileNetV2 and InceptionV3, with Keras 3.15's signatures, layer names and layer order (so
``get_layer('mixed7')`` and Keras's weight files work), and per model module
``preprocess_input`` / ``decode_predictions``.

    from fastcnn.applications.inception_v3 import InceptionV3
    base = InceptionV3(input_shape=(150, 150, 3), include_top=False, weights=None)
    base.load_weights("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")

``weights='imagenet'`` (Keras's default) uses Keras's published file: found in fastcnn's
cache (``$FASTCNN_CACHE/models/``, default ``~/.cache/fastcnn/models/``) or Keras's
(``~/.keras/models/``), else downloaded into fastcnn's cache and MD5-checked; without a
network the error names the file and where to put it.
"""
from . import imagenet_utils, inception_v3, mobilenet_v2, resnet50, vgg16
from .inception_v3 import InceptionV3
from .mobilenet_v2 import MobileNetV2
from .resnet50 import ResNet50
from .vgg16 import VGG16

__all__ = ["VGG16", "ResNet50", "MobileNetV2", "InceptionV3", "imagenet_utils", "vgg16",
           "resnet50", "mobilenet_v2", "inception_v3"]

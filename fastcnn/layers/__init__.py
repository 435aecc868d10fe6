"""Keras-shaped layers (channels-last NHWC activations, HWIO conv kernels)."""
from .base import Layer
from .kernel_layer import KernelLayer
from .conv import Conv2D
from .depthwise import DepthwiseConv2D, SeparableConv2D
from .transpose import Conv2DTranspose
from .core import Activation, Dense, Dropout, Flatten, Input, InputLayer
from .pooling import AveragePooling2D, MaxPooling2D
from .global_pooling import GlobalAveragePooling2D, GlobalMaxPooling2D
from .normalization import BatchNormalization
from .preprocessing import Rescaling
from .augmentation import CenterCrop, RandomBrightness, RandomContrast, RandomCrop, RandomFlip, RandomRotation, RandomTranslation, RandomZoom, Resizing
from .reshaping import Cropping2D, Reshape, UpSampling2D, ZeroPadding2D
from .activation_layers import ELU, LeakyReLU, PReLU, ReLU, Softmax
from .merging import (Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract, add, average, concatenate, maximum, minimum, multiply, subtract)

# Keras's short aliases.
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
Convolution2D = Conv2D

__all__ = [
    "Layer", "KernelLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "MaxPooling2D", "AveragePooling2D", "Dense", "Flatten", "Dropout",
    "Activation", "Input", "InputLayer", "MaxPool2D", "AvgPool2D", "Convolution2D",
    "BatchNormalization", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding2D",
    "Cropping2D", "UpSampling2D", "Reshape", "Rescaling",
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness", "RandomCrop", "Resizing", "CenterCrop",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate",
]

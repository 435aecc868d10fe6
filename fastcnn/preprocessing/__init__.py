"""Data preprocessing (Keras's ``keras.preprocessing``): image batches and augmentation."""
from . import image
from .image import ImageDataGenerator

__all__ = ["image", "ImageDataGenerator"]

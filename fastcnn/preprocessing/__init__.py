"""Data preprocessing (Keras's ``keras.preprocessing``): image batches and augmentation, and
``image_dataset_from_directory`` (also ``fastcnn.utils.image_dataset_from_directory``)."""
from . import dataset, image
from .dataset import image_dataset_from_directory
from .image import ImageDataGenerator

__all__ = ["image", "dataset", "ImageDataGenerator", "image_dataset_from_directory"]

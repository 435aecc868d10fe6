"""mpiexec -n 2 python iterators.py OUT FOLDER: ImageDataGenerator iterators under MPI.

Records which files each process decodes while fit runs one epoch on a folder, the
weights fit ends with, and each process's part (set_shard) of the first batches of an
augmented flow() over arrays; the weights of fit on image_dataset_from_directory (two
epochs, seed=None: each process drew another listing seed) and the files each decoded.
"""
import os
import sys

import numpy as np

import common
import fastcnn
from fastcnn.preprocessing.dataset import ImageDataset
from fastcnn.preprocessing.image import DirectoryIterator, ImageDataGenerator

out, folder = sys.argv[1], sys.argv[2]
rank = common.start(2)

decoded = []
real_decode = DirectoryIterator._decode


def spy(self, i):
    decoded.append(int(i))
    return real_decode(self, i)


DirectoryIterator._decode = spy
# Different seeds: the iterator's own seed differs between the processes until fit hands
# rank 0's to everyone.
fastcnn.set_random_seed(600 + rank)
it = ImageDataGenerator(rescale=1 / 255, horizontal_flip=True).flow_from_directory(
    folder, target_size=(8, 8), color_mode="grayscale", class_mode="sparse", batch_size=5)
model = common.small_model(units=2)
model.fit(it, epochs=1, verbose=0)
it.close()
np.savez(common.out_path(out, "folder", rank) + ".npz", decoded=np.array(decoded),
         weights=common.flat_weights(model))

# image_dataset_from_directory with seed=None: each process's listing is shuffled by a
# seed of its own; fit gives every process rank 0's state and its shard.
decoded_paths = []
real_decode_path = ImageDataset._decode


def spy_path(self, path):
    decoded_paths.append(os.path.basename(path))
    return real_decode_path(self, path)


ImageDataset._decode = spy_path
fastcnn.set_random_seed(700 + rank)
ds = fastcnn.utils.image_dataset_from_directory(
    folder, image_size=(8, 8), color_mode="grayscale", batch_size=5, verbose=rank == 0)
model = common.small_model(units=2)
model.fit(ds, epochs=2, verbose=0)
ds.close()
np.savez(common.out_path(out, "dataset", rank) + ".npz", weights=common.flat_weights(model),
         decoded=np.array(decoded_paths))

x, _ = common.data(11)
flow = ImageDataGenerator(rotation_range=30, width_shift_range=0.2, horizontal_flip=True,
                          vertical_flip=True).flow(x, batch_size=4, seed=3)
# Outside fit, an iterator serves whole batches until told its shard (fit, evaluate and
# predict tell it).
flow.set_shard(fastcnn.distributed.rank(), fastcnn.distributed.size())
np.savez(common.out_path(out, "flow", rank) + ".npz", *[next(flow) for _ in range(4)])

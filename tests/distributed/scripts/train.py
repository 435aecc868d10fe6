"""mpiexec -n 2 python train.py OUT: the training scenarios of test_distributed_training.py.

Every process writes what it ends with into OUT (files named NAME-RANK); the test compares
them with one process's results computed in the test itself.
"""
import os
import sys

import numpy as np

import common
import fastcnn
from fastcnn import saving
from fastcnn.callbacks import CSVLogger, ModelCheckpoint

out = sys.argv[1]
rank = common.start(2)

# --- 1. equality with one process: shuffle=False, batch 7 of 36 samples (shares of 4 and 3,
#     and a last batch of 1 sample that leaves process 1 nothing), validation, predict.
fastcnn.set_random_seed(100 + rank)        # different initial weights on each process
model = common.small_model()
before = common.flat_weights(model)
x, y = common.data(36)
xv, yv = common.data(10, seed=1)
history = model.fit(x, y, batch_size=7, epochs=2, shuffle=False, validation_data=(xv, yv),
                    verbose=0)
np.savez(common.out_path(out, "equal", rank) + ".npz", before=before,
         after=common.flat_weights(model), predict=model.predict(xv, batch_size=4),
         evaluate=np.array(model.evaluate(xv, yv, batch_size=3, verbose=0)))
common.dump_json(common.out_path(out, "history", rank) + ".json", history.history)

# --- 2. shuffle=True: rank 0's permutation for everyone (seeded as one process would be).
fastcnn.set_random_seed(200 + rank)
model = common.small_model()
model.fit(x, y, batch_size=8, epochs=2, shuffle=True, verbose=0)
np.save(common.out_path(out, "shuffled", rank) + ".npy", common.flat_weights(model))

# --- 3. train_on_batch, Horovod style: each process its own batch (3 and 2 samples).
fastcnn.set_random_seed(300)
model = common.small_model()
xb, yb = common.data(5, seed=2)
own = slice(0, 3) if rank == 0 else slice(3, 5)
loss = model.train_on_batch(xb[own], yb[own])
np.save(common.out_path(out, "on_batch", rank) + ".npy",
        np.concatenate([common.flat_weights(model), np.ravel(loss)]))

# --- 4. BatchNormalization: per-process batch statistics, moving statistics averaged.
fastcnn.set_random_seed(400)
model = common.small_model(batchnorm=True)
model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
bn = model.layers[1]
np.savez(common.out_path(out, "batchnorm", rank) + ".npz",
         moving=np.concatenate([w.ravel() for w in bn.non_trainable_weights]),
         weights=common.flat_weights(model), predict=model.predict(xv))

# --- 5. output and files: only rank 0 prints and writes, each file once.
writes = []
real_write = saving._atomic_write


def counting_write(path, *args, **kwargs):
    writes.append(os.path.basename(path))
    return real_write(path, *args, **kwargs)


saving._atomic_write = counting_write
fastcnn.set_random_seed(500)
model = common.small_model()
print(f"process {rank} starts the verbose fit", flush=True)
model.fit(x, y, batch_size=8, epochs=2, verbose=2, validation_data=(xv, yv), callbacks=[
    ModelCheckpoint(os.path.join(out, "ckpt-{epoch}.fcnn"), verbose=1),
    CSVLogger(os.path.join(out, "log.csv"))])
model.save(os.path.join(out, "model.fcnn"))
model.save_weights(os.path.join(out, "weights.fcnn"))
model.evaluate(xv, yv, verbose=1)
common.dump_json(common.out_path(out, "writes", rank) + ".json", writes)

# --- 6. a callback that stops training on one process only: every process stops with it.
from fastcnn.callbacks import LambdaCallback  # noqa: E402


def stop_on_process_1(epoch, logs):
    if rank == 1:
        model.stop_training = True


model = common.small_model()
history = model.fit(x, y, batch_size=8, epochs=4, verbose=0,
                    callbacks=[LambdaCallback(on_epoch_end=stop_on_process_1)])
common.dump_json(common.out_path(out, "stopped", rank) + ".json", history.epoch)

# --- 7. a Functional model (residual Add, a shared layer): the same as one process.
fastcnn.set_random_seed(700 + rank)
model = common.graph_model()
model.fit(x, y, batch_size=7, epochs=2, shuffle=False, verbose=0)
np.savez(common.out_path(out, "graph", rank) + ".npz", after=common.flat_weights(model),
         predict=model.predict(xv, batch_size=4))

"""mpiexec -n 2 python failing.py MODE: one process fails while the other trains on.

MODE 'raise': process 1 raises in a callback; 'exit': process 1 dies (os._exit);
'batch': a global batch smaller than the number of processes, not caught.
Whatever happens, no process may reach the end, and the launch must end (non-zero).
"""
import os
import sys

import common
from fastcnn.callbacks import LambdaCallback

mode = sys.argv[1]
rank = common.start(2)
x, y = common.data(64)
model = common.small_model()


def fail(epoch, logs):
    if rank == 1 and epoch == 1:
        if mode == "raise":
            raise RuntimeError("process 1 fails on purpose")
        os._exit(7)


model.fit(x, y, batch_size=1 if mode == "batch" else 8, epochs=200, verbose=0,
          callbacks=[LambdaCallback(on_epoch_end=fail)])
print(f"process {rank} was not stopped", flush=True)

"""mpiexec -n 2 python exiting.py MODE: process 1 leaves early; the job must still end.

MODE 'sys_exit_0' / 'sys_exit_1' / 'os_exit_0' / 'os_exit_1': process 1 leaves fit at the
end of epoch 1 that way while process 0 trains on (200 epochs): no process may reach the
end of the script, and the launch must end.
'apart': both train, process 1 ends its script at once, process 0 works alone for longer
than EXIT_STUCK_SECONDS (a sleep, then a save): nobody may be aborted.
'late': both train, process 1 ends its script, process 0 then enters a collective call
(distributed.barrier()) that can never complete: the job must be aborted, naming it.
"""
import os
import sys
import time

import common
from fastcnn import distributed
from fastcnn.callbacks import LambdaCallback

mode, out = sys.argv[1], sys.argv[2]
rank = common.start(2)
x, y = common.data(64)
model = common.small_model()


def leave(epoch, logs):
    if rank == 1 and epoch == 1:
        how, code = mode.rsplit("_", 1)
        if how == "sys_exit":
            sys.exit(int(code))
        os._exit(int(code))


if mode in ("apart", "late"):
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    if rank == 0:
        if mode == "apart":
            time.sleep(3 * getattr(distributed, "EXIT_STUCK_SECONDS", 1.0))
            model.save(os.path.join(out, "model.fcnn"))
        else:
            distributed.barrier()
    print(f"process {rank} finished", flush=True)
else:
    model.fit(x, y, batch_size=8, epochs=200, verbose=0,
              callbacks=[LambdaCallback(on_epoch_end=leave)])
    print(f"process {rank} was not stopped", flush=True)

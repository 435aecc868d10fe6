"""python api.py N: the module-level API on N processes (N = 1: run without mpiexec)."""
import sys

import common
from fastcnn import distributed

expected = int(sys.argv[1])
rank = common.start(expected)
distributed.init()   # idempotent
assert distributed.is_initialized()
assert distributed.size() == expected and 0 <= rank < expected
assert distributed.local_size() == expected and distributed.local_rank() == rank
assert distributed.is_primary() == (rank == 0)
assert distributed.current().size == expected
assert distributed.broadcast({"from": rank}) == {"from": 0}
distributed.barrier()

model = common.small_model()
x, y = common.data(12)
model.fit(x, y, batch_size=4, epochs=1, verbose=0)
assert model.predict(x, batch_size=4).shape == (12, 3)
print(f"api ok on process {rank} of {expected}", flush=True)

# local(): one process works alone without the other taking part
if rank == 0:
    with distributed.local():
        assert distributed.current().size == 1 and distributed.rank() == 0
        model.fit(x[:5], y[:5], batch_size=1, epochs=1, verbose=0)   # batch 1: alone
        assert model.predict(x, batch_size=4).shape == (12, 3)
distributed.barrier()
assert distributed.current().size == expected
print(f"local ok on process {rank}", flush=True)

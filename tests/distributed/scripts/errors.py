"""mpiexec -n 2 python errors.py OUT: errors that every process detects together.

Each is caught, its message recorded in OUT/errors-RANK.json; a last fit checks that the
processes are still in step afterwards (no collective call left half-done).
"""
import sys
import warnings

import numpy as np

import common
import fastcnn

out = sys.argv[1]
rank = common.start(2)
results = {}


def attempt(name, function):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            function()
        results[name] = {"error": None, "warnings": [str(w.message) for w in caught]}
    except Exception as exc:  # noqa: BLE001  (recorded for the test to check)
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}


x, y = common.data(16)
fastcnn.set_random_seed(1)
model = common.small_model()
attempt("fit_batch", lambda: model.fit(x, y, batch_size=1, verbose=0))
attempt("predict_batch", lambda: model.predict(x, batch_size=1))

# process 1 builds a wider last layer
model = common.small_model(units=3 if rank == 0 else 4)
attempt("architecture", lambda: model.fit(x, y, batch_size=4, verbose=0))

model = common.small_model()
n = 16 if rank == 0 else 12
attempt("data_size", lambda: model.fit(x[:n], y[:n], batch_size=4, verbose=0))
attempt("predict_size", lambda: model.predict(x[:n], batch_size=4))
attempt("epochs", lambda: model.fit(x, y, batch_size=4, epochs=1 + rank, verbose=0))
# Horovod's habit: each process passes its own part of the data, of the same size
attempt("data_content", lambda: model.fit(x + rank, y, batch_size=4, verbose=0))


def batches(count):   # process 1's generator runs out one batch earlier
    for i in range(count):
        yield x[4 * i:4 * i + 4], y[4 * i:4 * i + 4]


model = common.small_model()
attempt("generator", lambda: model.fit(batches(3 if rank == 0 else 2), steps_per_epoch=3,
                                       epochs=1, verbose=0))
results["generator"]["iterations"] = model.optimizer.iterations

fastcnn.set_random_seed(2 + rank)
model = common.small_model()
model.fit(x, y, batch_size=4, epochs=1, verbose=0)
np.save(common.out_path(out, "after", rank) + ".npy", common.flat_weights(model))
common.dump_json(common.out_path(out, "errors", rank) + ".json", results)

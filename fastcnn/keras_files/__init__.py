"""Keras's model and weight files: ``.keras`` archives, ``.weights.h5`` and legacy ``.h5``.

Needs h5py, an optional dependency (``pip install fastcnn[keras]``); without it these
functions raise ImportError saying so. fastcnn's own format (any other path) needs
nothing. ``fastcnn.load_model``, ``model.save``, ``model.save_weights`` and
``model.load_weights`` route here by the file's content (reading) or suffix (writing):

* ``fastcnn.load_model('m.keras')``: a Keras 3 archive (config.json, metadata.json,
  model.weights.h5); ``fastcnn.load_model('m.h5')``: a legacy full-model HDF5 file
  (``model_config`` attribute + ``model_weights`` group). Sequential and Functional
  models (nested ones too) of the layers fastcnn has; Keras's configs are translated
  (fastcnn's layers take Keras's names: see ``_config``). Keras's compile config
  (optimizer, loss, metrics) is restored where fastcnn has them, else a warning leaves
  the model uncompiled; the optimizer's state is not read.
* ``model.load_weights('w.weights.h5')`` (or a ``.keras`` file): Keras 3's layout,
  ``layers/<snake_case class>[_k]/vars/<i>`` in the order Keras gives the model's layers,
  each layer's variables in Keras's order (BatchNormalization: gamma, beta, moving_mean,
  moving_variance; conv kernels HWIO; Dense kernels (in, out)); ``skip_mismatch=True``
  skips (with a warning) a layer whose variables differ.
* ``model.load_weights('w.h5')``: Keras's legacy layout (``layer_names`` /
  ``weight_names``): layers with weights matched in order, or by name with
  ``by_name=True``; ``skip_mismatch=True`` skips weights of another shape (a warning).
* ``model.save('m.keras')`` writes a Keras 3 archive that ``keras.saving.load_model``
  opens (with a compiled model's compile config, not its optimizer state: Keras warns
  that it starts the optimizer afresh); ``model.save('m.h5')`` a legacy full-model file; ``model.save_weights
  ('w.weights.h5')`` Keras 3's weights, ``model.save_weights('w.h5')`` the legacy
  layout. A layer Keras cannot represent raises ValueError naming it before anything is
  written, and the file appears whole or not at all (a temporary file renamed).

Safety, as for fastcnn's own files: nothing from a file is executed (no pickle; layer,
initializer, regularizer and constraint classes come from fastcnn's allow-lists; a
Lambda layer or a custom object is refused), the architecture is built under a budget
set by the weight bytes the file really holds, every dataset's shape and dtype is
checked against the layer's weight before it is read, and a broken, truncated or crafted
file raises :class:`fastcnn.saving.ModelFileError` naming the file and the first layer or
variable that does not fit (see ``_h5`` for the HDF5 checks).
"""
from ._files import (is_keras_save_path, keras_config, load_model, load_weights, save_model,
                     save_weights, sniff)

__all__ = ["load_model", "load_weights", "save_model", "save_weights", "keras_config",
           "sniff", "is_keras_save_path"]

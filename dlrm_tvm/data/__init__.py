"""Where training data comes from and the form every kernel sees it in:

* ``batch``: the batch layout, its validation, the synthetic generator (exported here:
  ``from dlrm_tvm.data import Batch, validate_batch, SyntheticData``);
* ``sources``: the sources a run draws batches from, with a position checkpoints save;
* ``criteo``: Criteo raw parsing, one-time binary preprocessing, memory-mapped batches.
"""

from dlrm_tvm.data.batch import (
    Batch,
    BatchError,
    SyntheticData,
    validate_batch,
    zipf_draw,
    zipf_rows,
)

__all__ = ["Batch", "BatchError", "SyntheticData", "validate_batch", "zipf_draw", "zipf_rows"]

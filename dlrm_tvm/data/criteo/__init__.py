"""Criteo click logs, one module a concern (each module's docstring has its part of the format):

* ``layout``: the 40-field row, the binary row, ``DataError``, the input-file check;
* ``raw``: the raw text parser and its bad-line policy (``parse_raw``, ``read_raw``);
* ``category_map``: the per-column category -> contiguous id map of ``remap``;
* ``writer``: ``preprocess`` (raw files once into MLPerf binary files and ``meta.json``), the
  input identity and ``meta.json`` checks;
* ``binary``: ``BinaryDataset`` (memory-mapped binary rows, checked) and its batch stream;
* ``synthetic``: ``write_synthetic_raw``, realistic raw files for tests and benchmarks;
* ``multihot`` / ``multihot_writer``: MLPerf DLRM-DCNv2's materialised multi-hot days
  (``MultiHotSource``: ``--data criteo-multihot``) and ``materialize_multihot``.

The names below are the package's interface: ``from dlrm_tvm.data.criteo import preprocess``.
"""

from dlrm_tvm.data.criteo.binary import BatchStream, BinaryDataset, make_batch
from dlrm_tvm.data.criteo.category_map import CategoryMap
from dlrm_tvm.data.criteo.layout import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MIN_FIELDS,
    NUM_CAT,
    NUM_DENSE,
    NUM_FIELDS,
    ROW_BYTES,
    DataError,
    check_input_file,
)
from dlrm_tvm.data.criteo.raw import RawChunk, RawReader, RawStats, parse_raw, read_raw
from dlrm_tvm.data.criteo.synthetic import write_synthetic_raw
from dlrm_tvm.data.criteo.writer import (
    input_identity,
    load_meta,
    meta_member,
    preprocess,
    preprocess_mismatch,
    preprocess_params,
)

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "MIN_FIELDS", "NUM_CAT", "NUM_DENSE", "NUM_FIELDS",
    "ROW_BYTES", "BatchStream", "BinaryDataset", "CategoryMap", "DataError", "RawChunk",
    "RawReader", "RawStats", "check_input_file", "input_identity", "load_meta", "make_batch",
    "meta_member", "parse_raw", "preprocess", "preprocess_mismatch", "preprocess_params",
    "read_raw", "write_synthetic_raw",
]

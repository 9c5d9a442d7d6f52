"""Measurement: everything `dlrm-tvm bench` and `kernels bench --op embedding_*` time, and how.

* ``step_bench``: ``bench``: our step against PyTorch in one process, per function and kernel;
* ``embedding_bench``: embedding kernels at table scale against a plain gather and torch;
* ``loader_bench``: ``bench --loader``: Criteo loading rates against the step's appetite;
* ``scaling``: ``bench --ranks``: measured rank scaling and a model to 64 sockets;
* ``peaks``: this machine's measured ceilings (FLOP/s, copy and gather bandwidth);
* ``timing``: the one way benchmarks here time code;
* ``torch_ref``: a PyTorch DLRM, the torch contender here and the reference model of the tests.

torch is a contender here (and the reference in tests), never part of training.
"""

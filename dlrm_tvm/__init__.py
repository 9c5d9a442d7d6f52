"""dlrm-tvm: a compiler-built DLRM trainer for x86 CPUs on Apache TVM (Relax + TIR).

Layout: ``dlrm_tvm.graphs`` (what is computed), ``dlrm_tvm.schedules`` (how each kernel is
scheduled), ``dlrm_tvm.runtime`` (where and when it runs), and this package for the driver:
config, targets, compile pipeline, artifacts, training, CLI (its top-level modules), with
``dlrm_tvm.data`` (batches, their sources, Criteo), ``dlrm_tvm.interop`` (checkpoints of the
reference, ONNX) and ``dlrm_tvm.bench`` (measurement against torch and the machine's ceilings).
"""

__version__ = "0.1.0"

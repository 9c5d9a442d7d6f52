"""Model state in and out of other formats:

* ``state_io``: the model state of a checkpoint, ours or a reference ``.pt``;
* ``reference``: facebookresearch/dlrm checkpoints to and from our state;
* ``onnx_export``: ``export-onnx``: the inference graph as ONNX, and a NumPy forward pass;
* ``torchrec_export``: ``export-torchrec``: the state dict of torchrec's DLRM_DCN (or DLRM).
"""

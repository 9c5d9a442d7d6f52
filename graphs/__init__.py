"""WHAT is computed: the DLRM graph in Relax and its kernels as plain TIR. No targets, no MPI."""

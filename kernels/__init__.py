"""Triton kernels of anm_fast (installed as the subpackage `anm_fast.kernels`)."""

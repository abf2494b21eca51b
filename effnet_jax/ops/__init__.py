"""Numerical ops, each written the way its backend runs it fastest, each tested against the plain formulation.

`depthwise` (grouped conv or shifted slices with a hand-written backward), `dense` (1x1 convs as matmuls, the
stem), `bn_act` (train-mode BatchNorm + activation with a closed-form backward), `native` (C++ kernels called
through XLA FFI, source in `csrc/`), `allocator` (the fast malloc the `effnet` command re-executes with) and
`host_memory` (glibc settings for XLA CPU's temporaries). This file imports nothing, so `allocator` and
`host_memory` run before jax is loaded.
"""

// Fixed-width float vectors (GCC/Clang vector extensions) for the loops that are vectorised by hand.
#pragma once

namespace effnet {

// VL floats as one vector: AVX-512 registers with -march=native where the CPU has them, pairs of AVX2 registers
// elsewhere; unaligned, and may alias the float buffers, so a `float*` can be read through it.
template <int VL>
struct Vec {
  typedef float type __attribute__((vector_size(VL * sizeof(float)), aligned(4), may_alias));
};

}  // namespace effnet

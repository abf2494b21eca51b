// Depthwise-conv forward for XLA CPU, called through XLA FFI (see effnet_jax/ops/native.py).
//
//   y[n, a, b, c] = sum over (i, j) of x[n, a*s + i - pt, b*s + j - pl, c] * k[i*kw + j, c]
//
// x is NHWC float32 and zero outside its bounds (the bottom/right padding is implied by y's size); the kernel is
// (kh*kw, C). XLA CPU runs the shifted-slice formulation as k*k passes over strided windows (and, at inference,
// fuses the preceding BN + SiLU into it, recomputing them once per tap); this loop keeps a block of output
// pixels x channel vectors in registers, reads each input pixel from cache once per tap, and has no bounds
// checks in the interior columns. Rows (n, a) are split into parts over the calling thread and XLA's intra-op pool
// (parallel.h).
#include <algorithm>
#include <cstdint>

#include "parallel.h"
#include "vec.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using effnet::ParallelRows;
using effnet::Vec;

namespace {

using Nhwc = ffi::Buffer<ffi::F32, 4>;
using Taps = ffi::Buffer<ffi::F32, 2>;

struct Shape {
  int64_t H, W, C, Ho, Wo, kh, kw, s, pt, pl;
};

// Output columns [b_lo, b_hi) whose every tap column lies inside [0, W).
inline void InteriorColumns(const Shape& d, int64_t& b_lo, int64_t& b_hi) {
  b_lo = std::min<int64_t>(d.Wo, (d.pl + d.s - 1) / d.s);
  const int64_t last = d.W - d.kw + d.pl;  // b*s <= last
  b_hi = last < 0 ? 0 : std::min<int64_t>(d.Wo, last / d.s + 1);
  if (b_hi < b_lo) b_hi = b_lo;
}

// PB output pixels (columns b .. b+PB-1 of row a) x NV vectors of VL channels from c0, accumulated in registers
// over all taps; no column checks when CHECK is false.
template <int PB, int NV, int VL, bool CHECK>
inline void Block(const float* __restrict xn, const float* __restrict k, float* __restrict yrow, int64_t a,
                  int64_t b, int64_t c0, const Shape& d) {
  using V = typename Vec<VL>::type;
  V acc[PB][NV];
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[p][v] = V{} * 0.0f;
  const int64_t C = d.C;
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t h = a * d.s + i - d.pt;
    if (h < 0 || h >= d.H) continue;
    const float* xr = xn + h * d.W * C + c0;
    for (int64_t j = 0; j < d.kw; ++j) {
      const float* kt = k + (i * d.kw + j) * C + c0;
      V kv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) kv[v] = *reinterpret_cast<const V*>(kt + v * VL);
      const int64_t w0 = b * d.s + j - d.pl;
#pragma GCC unroll 16
      for (int p = 0; p < PB; ++p) {
        const int64_t w = w0 + p * d.s;
        if (CHECK && (w < 0 || w >= d.W)) continue;
        const float* xp = xr + w * C;
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[p][v] += *reinterpret_cast<const V*>(xp + v * VL) * kv[v];
      }
    }
  }
  float* out = yrow + b * C + c0;
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + p * C + v * VL) = acc[p][v];
}

// PB output pixels from column b, all channels: channel blocks innermost, so a row is read front to back.
template <int PB, bool CHECK>
inline void Pixels(const float* xn, const float* k, float* yrow, int64_t a, int64_t b, const Shape& d) {
  int64_t c = 0;
  for (; c + 64 <= d.C; c += 64) Block<PB, 4, 16, CHECK>(xn, k, yrow, a, b, c, d);
  for (; c + 32 <= d.C; c += 32) Block<PB, 2, 16, CHECK>(xn, k, yrow, a, b, c, d);
  for (; c + 16 <= d.C; c += 16) Block<PB, 1, 16, CHECK>(xn, k, yrow, a, b, c, d);
  for (; c + 8 <= d.C; c += 8) Block<PB, 1, 8, CHECK>(xn, k, yrow, a, b, c, d);
  for (; c < d.C; ++c) Block<PB, 1, 1, CHECK>(xn, k, yrow, a, b, c, d);
}

void FwdRows(const float* x, const float* k, float* y, int64_t r0, int64_t r1, const Shape& d) {
  constexpr int PB = 4;  // 4 pixels x 4 vectors: 16 accumulators (of 32 AVX-512 registers)
  int64_t b_lo, b_hi;
  InteriorColumns(d, b_lo, b_hi);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.Ho, a = r % d.Ho;
    const float* xn = x + n * d.H * d.W * d.C;
    float* yrow = y + r * d.Wo * d.C;
    int64_t b = 0;
    for (; b < b_lo; ++b) Pixels<1, true>(xn, k, yrow, a, b, d);
    for (; b + PB <= b_hi; b += PB) Pixels<PB, false>(xn, k, yrow, a, b, d);
    for (; b < b_hi; ++b) Pixels<1, false>(xn, k, yrow, a, b, d);
    for (; b < d.Wo; ++b) Pixels<1, true>(xn, k, yrow, a, b, d);
  }
}

ffi::Error DepthwiseFwd(ffi::ThreadPool pool, Nhwc x, Taps k, ffi::Result<Nhwc> y, int64_t kh, int64_t kw, int64_t s,
                        int64_t pt, int64_t pl) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (yd[0] != xd[0] || yd[3] != xd[3] || kd[0] != kh * kw || kd[1] != xd[3] || s < 1 || kh < 1 || kw < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "depthwise_fwd: inconsistent shapes or stride");
  const Shape d{xd[1], xd[2], xd[3], yd[1], yd[2], kh, kw, s, pt, pl};
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = xd[0] * d.Ho;
  if (rows == 0 || d.Wo == 0 || d.C == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Several parts per thread balance uneven progress; a part of at least ~64K outputs amortises its scheduling.
  const int64_t per_row = d.Wo * d.C;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({rows, 8 * threads, rows * per_row / 65536 + 1}));
  ParallelRows(pool, rows, parts, [=](int64_t, int64_t r0, int64_t r1) { FwdRows(xp, kp, yp, r0, r1, d); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDepthwiseFwd, DepthwiseFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Nhwc>()
                                  .Arg<Taps>()
                                  .Ret<Nhwc>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

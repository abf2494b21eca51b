// Depthwise-conv input gradient for XLA CPU, called through XLA FFI (see effnet_jax/ops/native.py).
//
//   dx[n, h, w, c] = sum over (i, j) with h + pt - i = a*s, w + pl - j = b*s, 0 <= a < Ho, 0 <= b < Wo
//                    of g[n, a, b, c] * k[i*kw + j, c]
//
// the transpose of depthwise_fwd.cc's forward (g is the output gradient, NHWC float32; the kernel is (kh*kw, C)).
// Each input row gathers the taps whose (h + pt - i) is divisible by s; along a row, input columns of one phase
// (w = r, r + s, r + 2s, ...) meet the same taps j, so a block of PB such columns x channel vectors is accumulated
// in registers, columns away from the borders without bounds checks. Rows (n, h) are split over the calling thread
// and XLA's intra-op pool (parallel.h).
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

// dx at PB input columns w0, w0 + s, ... of row h x NV vectors of VL channels from c0. Interior blocks
// (CHECK false) have every tap of their phase inside [0, Wo); border blocks are single columns.
template <int PB, int NV, int VL, bool CHECK>
inline void Block(const float* __restrict gn, const float* __restrict k, float* __restrict dxrow, int64_t h,
                  int64_t w0, int64_t c0, const Shape& d) {
  static_assert(!CHECK || PB == 1, "border blocks are single columns");
  using V = typename Vec<VL>::type;
  V acc[PB][NV];
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[p][v] = V{} * 0.0f;
  const int64_t C = d.C;
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t u = h + d.pt - i;
    if (u < 0 || u % d.s != 0 || u / d.s >= d.Ho) continue;
    const float* gr = gn + (u / d.s) * d.Wo * C + c0;
    for (int64_t j = 0; j < d.kw; ++j) {
      const int64_t t = w0 + d.pl - j;
      if (CHECK) {
        if (t < 0 || t % d.s != 0 || t / d.s >= d.Wo) continue;
      } else if (t % d.s != 0) {
        continue;
      }
      const float* kt = k + (i * d.kw + j) * C + c0;
      V kv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) kv[v] = *reinterpret_cast<const V*>(kt + v * VL);
      const float* gp = gr + (t / d.s) * C;
#pragma GCC unroll 16
      for (int p = 0; p < PB; ++p)
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[p][v] += *reinterpret_cast<const V*>(gp + p * C + v * VL) * kv[v];
    }
  }
  float* out = dxrow + w0 * C + c0;
#pragma GCC unroll 16
  for (int p = 0; p < PB; ++p)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + p * d.s * C + v * VL) = acc[p][v];
}

template <int PB, bool CHECK>
inline void Pixels(const float* gn, const float* k, float* dxrow, int64_t h, int64_t w0, const Shape& d) {
  int64_t c = 0;
  for (; c + 64 <= d.C; c += 64) Block<PB, 4, 16, CHECK>(gn, k, dxrow, h, w0, c, d);
  for (; c + 32 <= d.C; c += 32) Block<PB, 2, 16, CHECK>(gn, k, dxrow, h, w0, c, d);
  for (; c + 16 <= d.C; c += 16) Block<PB, 1, 16, CHECK>(gn, k, dxrow, h, w0, c, d);
  for (; c + 8 <= d.C; c += 8) Block<PB, 1, 8, CHECK>(gn, k, dxrow, h, w0, c, d);
  for (; c < d.C; ++c) Block<PB, 1, 1, CHECK>(gn, k, dxrow, h, w0, c, d);
}

void DgradRows(const float* g, const float* k, float* dx, int64_t r0, int64_t r1, const Shape& d) {
  constexpr int PB = 4;
  // Column w is interior when every tap j of its phase has 0 <= (w + pl - j) / s < Wo: w + pl >= kw - 1 and
  // w + pl < Wo * s suffice.
  const int64_t w_lo = std::max<int64_t>(0, d.kw - 1 - d.pl);
  const int64_t w_hi = std::min<int64_t>(d.W, d.Wo * d.s - d.pl);  // exclusive
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.H, h = r % d.H;
    const float* gn = g + n * d.Ho * d.Wo * d.C;
    float* dxrow = dx + r * d.W * d.C;
    for (int64_t ph = 0; ph < d.s && ph < d.W; ++ph) {
      int64_t w = ph;
      for (; w < d.W && w < w_lo; w += d.s) Pixels<1, true>(gn, k, dxrow, h, w, d);
      for (; w + (PB - 1) * d.s < w_hi; w += PB * d.s) Pixels<PB, false>(gn, k, dxrow, h, w, d);
      for (; w < w_hi; w += d.s) Pixels<1, false>(gn, k, dxrow, h, w, d);
      for (; w < d.W; w += d.s) Pixels<1, true>(gn, k, dxrow, h, w, d);
    }
  }
}

ffi::Error DepthwiseDgrad(ffi::ThreadPool pool, Nhwc g, Taps k, ffi::Result<Nhwc> dx, int64_t kh, int64_t kw,
                          int64_t s, int64_t pt, int64_t pl) {
  const auto gd = g.dimensions(), kd = k.dimensions(), xd = dx->dimensions();
  if (gd[0] != xd[0] || gd[3] != xd[3] || kd[0] != kh * kw || kd[1] != xd[3] || s < 1 || kh < 1 || kw < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "depthwise_dgrad: inconsistent shapes or stride");
  const Shape d{xd[1], xd[2], xd[3], gd[1], gd[2], kh, kw, s, pt, pl};
  const float* gp = g.typed_data();
  const float* kp = k.typed_data();
  float* dxp = dx->typed_data();
  const int64_t rows = xd[0] * d.H;
  if (rows == 0 || d.W == 0 || d.C == 0) return ffi::Error::Success();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t per_row = d.W * d.C;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>({rows, 8 * threads, rows * per_row / 65536 + 1}));
  ParallelRows(pool, rows, parts, [=](int64_t, int64_t r0, int64_t r1) { DgradRows(gp, kp, dxp, r0, r1, d); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDepthwiseDgrad, DepthwiseDgrad,
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

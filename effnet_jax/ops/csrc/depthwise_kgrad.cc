// Depthwise-conv kernel gradient for XLA CPU, called through XLA FFI (see effnet_jax/ops/native.py).
//
//   dk[i*kw + j, c] = sum over (n, a, b) of x[n, a*s + i - pt, b*s + j - pl, c] * g[n, a, b, c]
//
// x is NHWC float32 and zero outside its bounds (the bottom/right padding is implied by g's size). XLA CPU runs
// this reduction at a few GMAC/s; this loop, vectorised over channels, is 3-9x faster at B0's shapes
// (benchmarks/depthwise_kgrad_ffi.py). The batch is split into parts over the calling thread and XLA's intra-op
// pool (parallel.h), each summing into its own copy of dk; the copies are added in part order.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using effnet::ParallelRows;

namespace {

// Aliases: a comma inside a template argument would split the handler macro's arguments.
using Nhwc = ffi::Buffer<ffi::F32, 4>;
using Taps = ffi::Buffer<ffi::F32, 2>;

struct Shape {
  int64_t H, W, C, Ho, Wo, kh, kw, s, pt, pl;
};

void KgradBatches(const float* x, const float* g, float* acc, int64_t n0, int64_t n1, const Shape& d) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * d.H * d.W * d.C;
    const float* gn = g + n * d.Ho * d.Wo * d.C;
    for (int64_t a = 0; a < d.Ho; ++a) {
      const float* grow = gn + a * d.Wo * d.C;
      for (int64_t i = 0; i < d.kh; ++i) {
        const int64_t h = a * d.s + i - d.pt;
        if (h < 0 || h >= d.H) continue;
        const float* xrow = xn + h * d.W * d.C;
        for (int64_t j = 0; j < d.kw; ++j) {
          if (d.W - 1 + d.pl - j < 0) continue;  // this tap lies right of every input column
          float* __restrict tap = acc + (i * d.kw + j) * d.C;
          // output columns b whose input column b*s + j - pl lies in [0, W)
          const int64_t b0 = std::max<int64_t>(0, (d.pl - j + d.s - 1) / d.s);
          const int64_t b1 = std::min<int64_t>(d.Wo, (d.W - 1 + d.pl - j) / d.s + 1);
          for (int64_t b = b0; b < b1; ++b) {
            const float* __restrict xp = xrow + (b * d.s + j - d.pl) * d.C;
            const float* __restrict gp = grow + b * d.C;
#pragma omp simd
            for (int64_t c = 0; c < d.C; ++c) tap[c] += xp[c] * gp[c];
          }
        }
      }
    }
  }
}

ffi::Error DepthwiseKgrad(ffi::ThreadPool pool, Nhwc x, Nhwc g, ffi::Result<Taps> dk, int64_t kh, int64_t kw, int64_t s, int64_t pt,
                          int64_t pl) {
  const auto xd = x.dimensions();
  const auto gd = g.dimensions();
  const int64_t C = xd[3];
  if (gd[0] != xd[0] || gd[3] != C || dk->dimensions()[0] != kh * kw || dk->dimensions()[1] != C || s < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "depthwise_kgrad: inconsistent shapes or stride");
  const Shape d{xd[1], xd[2], C, gd[1], gd[2], kh, kw, s, pt, pl};
  const int64_t N = xd[0];
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), N));
  const int64_t block = kh * kw * C;
  std::vector<float> acc(parts * block, 0.0f);  // parts x (kh*kw*C) partial sums
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  float* ap = acc.data();
  ParallelRows(pool, N, parts, [=](int64_t p, int64_t n0, int64_t n1) { KgradBatches(xp, gp, ap + p * block, n0, n1, d); });
  float* out = dk->typed_data();
  for (int64_t k = 0; k < block; ++k) {
    float v = 0.0f;
    for (int64_t p = 0; p < parts; ++p) v += acc[p * block + k];
    out[k] = v;
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDepthwiseKgrad, DepthwiseKgrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Nhwc>()
                                  .Arg<Nhwc>()
                                  .Ret<Taps>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

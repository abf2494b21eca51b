// Exploratory, not part of effnet: the depthwise-conv kernel gradient as an XLA FFI custom call on CPU.
//
// benchmarks/depthwise_kgrad_ffi.py builds this with g++ and times it against effnet_jax.depthwise's XLA
// formulation, to size what a hand-written kernel would win (the decision issue 5 is blocked on).
// dk[i, j, c] = sum over (n, a, b) of x[n, a*s + i - pt, b*s + j - pl, c] * g[n, a, b, c], x zero outside;
// NHWC float32, the batch split over XLA's intra-op thread pool, one accumulator block per thread.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>
#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;

static void kgrad_range(const float* x, const float* g, float* acc, int64_t n0, int64_t n1, int64_t H, int64_t W,
                        int64_t C, int64_t Ho, int64_t Wo, int64_t kh, int64_t kw, int64_t s, int64_t pt, int64_t pl) {
  for (int64_t n = n0; n < n1; ++n) {
    const float* xn = x + n * H * W * C;
    const float* gn = g + n * Ho * Wo * C;
    for (int64_t a = 0; a < Ho; ++a) {
      for (int64_t i = 0; i < kh; ++i) {
        int64_t h = a * s + i - pt;
        if (h < 0 || h >= H) continue;
        const float* xrow = xn + h * W * C;
        const float* grow = gn + a * Wo * C;
        for (int64_t j = 0; j < kw; ++j) {
          float* __restrict at = acc + (i * kw + j) * C;
          // columns b whose input column b*s + j - pl is inside [0, W)
          int64_t b0 = std::max<int64_t>(0, (pl - j + s - 1) / s);
          int64_t b1 = std::min<int64_t>(Wo, (W - 1 + pl - j) / s + 1);
          for (int64_t b = b0; b < b1; ++b) {
            const float* __restrict xp = xrow + (b * s + j - pl) * C;
            const float* __restrict gp = grow + b * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) at[c] += xp[c] * gp[c];
          }
        }
      }
    }
  }
}

static ffi::Error KgradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                            ffi::ResultBuffer<ffi::F32> dk, int64_t kh, int64_t kw, int64_t s, int64_t pt,
                            int64_t pl) {
  auto xd = x.dimensions(); auto gd = g.dimensions();
  int64_t N = xd[0], H = xd[1], W = xd[2], C = xd[3], Ho = gd[1], Wo = gd[2];
  int64_t T = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), N));
  std::vector<float> accs(T * kh * kw * C, 0.f);
  std::atomic<int64_t> remaining(T - 1);
  std::mutex m; std::condition_variable cv;
  auto part = [&](int64_t t) {
    int64_t n0 = N * t / T, n1 = N * (t + 1) / T;
    kgrad_range(x.typed_data(), g.typed_data(), accs.data() + t * kh * kw * C, n0, n1, H, W, C, Ho, Wo, kh, kw, s, pt, pl);
  };
  for (int64_t t = 1; t < T; ++t)
    pool.Schedule([&, t] { part(t); if (--remaining == 0) { std::lock_guard<std::mutex> l(m); cv.notify_one(); } });
  part(0);
  { std::unique_lock<std::mutex> l(m); cv.wait(l, [&] { return remaining.load() == 0; }); }
  float* out = dk->typed_data();
  for (int64_t k = 0; k < kh * kw * C; ++k) { float v = 0; for (int64_t t = 0; t < T; ++t) v += accs[t * kh * kw * C + k]; out[k] = v; }
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDwKgrad, KgradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

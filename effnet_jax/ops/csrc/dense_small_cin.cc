// Dense NHWC conv with few input channels (EfficientNet's stem: 3x3, stride 2, C = 3), forward and kernel
// gradient, for XLA CPU through XLA FFI (see effnet_jax/ops/native.py).
//
//   y[n, a, b, d]     = sum over (i, j, c)    of x[n, a*s + i - pt, b*s + j - pl, c] * k[i, j, c, d]
//   dk[i, j, c, d]    = sum over (n, a, b)    of x[n, a*s + i - pt, b*s + j - pl, c] * g[n, a, b, d]
//
// x is NHWC float32 and zero outside its bounds (the bottom/right padding is implied by y's / g's size), k is
// HWIO. XLA CPU lowers this conv to a library call that runs at ~10 GFLOP/s on C = 3 (the contraction per output
// pixel is only kh*kw*C = 27 deep); these loops keep a block of output pixels x output channels in registers.
// Rows are split into parts over the calling thread and XLA's intra-op pool (parallel.h).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using effnet::ParallelRows;

namespace {

using Nhwc = ffi::Buffer<ffi::F32, 4>;

struct Shape {
  int64_t H, W, C, Ho, Wo, D, kh, kw, s, pt, pl;
};

// Output columns [b_lo, b_hi) whose every tap column lies inside [0, W).
inline void InteriorColumns(const Shape& d, int64_t& b_lo, int64_t& b_hi) {
  b_lo = std::min<int64_t>(d.Wo, (d.pl + d.s - 1) / d.s);
  const int64_t last = d.W - d.kw + d.pl;  // b*s <= last
  b_hi = last < 0 ? 0 : std::min<int64_t>(d.Wo, last / d.s + 1);
  if (b_hi < b_lo) b_hi = b_lo;
}

// PB output pixels (columns b .. b+PB-1 of row a) x DB output channels from d0, all taps inside the row's columns
// when CHECK is false.
template <int PB, int DB, bool CHECK>
inline void FwdBlock(const float* __restrict xn, const float* __restrict k, float* __restrict yrow, int64_t a,
                     int64_t b, int64_t d0, const Shape& d) {
  float acc[PB][DB] = {};
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t h = a * d.s + i - d.pt;
    if (h < 0 || h >= d.H) continue;
    const float* xr = xn + h * d.W * d.C;
    for (int64_t j = 0; j < d.kw; ++j) {
      const float* kt = k + (i * d.kw + j) * d.C * d.D + d0;
      for (int64_t c = 0; c < d.C; ++c) {
        const float* __restrict kc = kt + c * d.D;
        for (int p = 0; p < PB; ++p) {
          const int64_t w = (b + p) * d.s + j - d.pl;
          if (CHECK && (w < 0 || w >= d.W)) continue;
          const float xv = xr[w * d.C + c];
#pragma omp simd
          for (int e = 0; e < DB; ++e) acc[p][e] += xv * kc[e];
        }
      }
    }
  }
  for (int p = 0; p < PB; ++p)
    for (int e = 0; e < DB; ++e) yrow[(b + p) * d.D + d0 + e] = acc[p][e];
}

template <int DB>
inline void FwdRowChannels(const float* xn, const float* k, float* yrow, int64_t a, int64_t d0, const Shape& d) {
  constexpr int PB = DB >= 16 ? 4 : 8;
  int64_t b_lo, b_hi;
  InteriorColumns(d, b_lo, b_hi);
  int64_t b = 0;
  for (; b < b_lo; ++b) FwdBlock<1, DB, true>(xn, k, yrow, a, b, d0, d);
  for (; b + PB <= b_hi; b += PB) FwdBlock<PB, DB, false>(xn, k, yrow, a, b, d0, d);
  for (; b < b_hi; ++b) FwdBlock<1, DB, false>(xn, k, yrow, a, b, d0, d);
  for (; b < d.Wo; ++b) FwdBlock<1, DB, true>(xn, k, yrow, a, b, d0, d);
}

void FwdRows(const float* x, const float* k, float* y, int64_t r0, int64_t r1, const Shape& d) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.Ho, a = r % d.Ho;
    const float* xn = x + n * d.H * d.W * d.C;
    float* yrow = y + r * d.Wo * d.D;
    int64_t d0 = 0;
    for (; d0 + 32 <= d.D; d0 += 32) FwdRowChannels<32>(xn, k, yrow, a, d0, d);
    for (; d0 + 16 <= d.D; d0 += 16) FwdRowChannels<16>(xn, k, yrow, a, d0, d);
    for (; d0 + 8 <= d.D; d0 += 8) FwdRowChannels<8>(xn, k, yrow, a, d0, d);
    for (; d0 < d.D; ++d0) FwdRowChannels<1>(xn, k, yrow, a, d0, d);
  }
}

// dk partial sums of one row (n, a) into acc (kh*kw*C*D): CB input channels from c0 x DB output channels from
// d0, CB*DB sums over the row's columns kept in registers (CB independent accumulator chains per vector).
template <int CB, int DB>
inline void KgradRowBlock(const float* xn, const float* __restrict grow, float* __restrict acc, int64_t a,
                          int64_t c0, int64_t d0, const Shape& d) {
  for (int64_t i = 0; i < d.kh; ++i) {
    const int64_t h = a * d.s + i - d.pt;
    if (h < 0 || h >= d.H) continue;
    const float* xr = xn + h * d.W * d.C + c0;
    for (int64_t j = 0; j < d.kw; ++j) {
      if (d.W - 1 + d.pl - j < 0) continue;  // this tap lies right of every input column
      const int64_t b0 = std::max<int64_t>(0, (d.pl - j + d.s - 1) / d.s);
      const int64_t b1 = std::min<int64_t>(d.Wo, (d.W - 1 + d.pl - j) / d.s + 1);
      float sum[CB][DB] = {};
      const float* xp = xr + (b0 * d.s + j - d.pl) * d.C;
      const int64_t xstep = d.s * d.C;
      const float* __restrict gp = grow + b0 * d.D + d0;
      for (int64_t b = b0; b < b1; ++b, xp += xstep, gp += d.D) {
        for (int q = 0; q < CB; ++q) {
          const float xv = xp[q];
#pragma omp simd
          for (int e = 0; e < DB; ++e) sum[q][e] += xv * gp[e];
        }
      }
      float* t = acc + ((i * d.kw + j) * d.C + c0) * d.D + d0;
      for (int q = 0; q < CB; ++q)
        for (int e = 0; e < DB; ++e) t[q * d.D + e] += sum[q][e];
    }
  }
}

template <int DB>
inline void KgradRowChannels(const float* xn, const float* grow, float* acc, int64_t a, int64_t d0, const Shape& d) {
  int64_t c = 0;
  for (; c + 4 <= d.C; c += 4) KgradRowBlock<4, DB>(xn, grow, acc, a, c, d0, d);
  switch (d.C - c) {
    case 3: KgradRowBlock<3, DB>(xn, grow, acc, a, c, d0, d); break;
    case 2: KgradRowBlock<2, DB>(xn, grow, acc, a, c, d0, d); break;
    case 1: KgradRowBlock<1, DB>(xn, grow, acc, a, c, d0, d); break;
    default: break;
  }
}

void KgradRows(const float* x, const float* g, float* acc, int64_t r0, int64_t r1, const Shape& d) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t n = r / d.Ho, a = r % d.Ho;
    const float* xn = x + n * d.H * d.W * d.C;
    const float* grow = g + r * d.Wo * d.D;
    int64_t d0 = 0;
    for (; d0 + 32 <= d.D; d0 += 32) KgradRowChannels<32>(xn, grow, acc, a, d0, d);
    for (; d0 + 16 <= d.D; d0 += 16) KgradRowChannels<16>(xn, grow, acc, a, d0, d);
    for (; d0 + 8 <= d.D; d0 += 8) KgradRowChannels<8>(xn, grow, acc, a, d0, d);
    for (; d0 < d.D; ++d0) KgradRowChannels<1>(xn, grow, acc, a, d0, d);
  }
}

ffi::Error ConvFwd(ffi::ThreadPool pool, Nhwc x, Nhwc k, ffi::Result<Nhwc> y, int64_t s, int64_t pt, int64_t pl) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (yd[0] != xd[0] || kd[2] != xd[3] || yd[3] != kd[3] || s < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dense_small_cin_fwd: inconsistent shapes or stride");
  const Shape d{xd[1], xd[2], xd[3], yd[1], yd[2], kd[3], kd[0], kd[1], s, pt, pl};
  const float* xp = x.typed_data();
  const float* kp = k.typed_data();
  float* yp = y->typed_data();
  const int64_t rows = xd[0] * d.Ho;
  if (rows == 0 || d.Wo == 0 || d.D == 0) return ffi::Error::Success();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(rows, 8 * std::max<int64_t>(1, pool.num_threads())));
  ParallelRows(pool, rows, parts, [=](int64_t, int64_t r0, int64_t r1) { FwdRows(xp, kp, yp, r0, r1, d); });
  return ffi::Error::Success();
}

ffi::Error ConvKgrad(ffi::ThreadPool pool, Nhwc x, Nhwc g, ffi::Result<Nhwc> dk, int64_t s, int64_t pt, int64_t pl) {
  const auto xd = x.dimensions(), gd = g.dimensions(), kd = dk->dimensions();
  if (gd[0] != xd[0] || kd[2] != xd[3] || gd[3] != kd[3] || s < 1)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "dense_small_cin_kgrad: inconsistent shapes or stride");
  const Shape d{xd[1], xd[2], xd[3], gd[1], gd[2], kd[3], kd[0], kd[1], s, pt, pl};
  const int64_t block = d.kh * d.kw * d.C * d.D;
  float* out = dk->typed_data();
  const int64_t rows = xd[0] * d.Ho;
  if (rows == 0 || d.Wo == 0) {
    std::fill(out, out + block, 0.0f);
    return ffi::Error::Success();
  }
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(1, pool.num_threads())));
  std::vector<float> acc(parts * block, 0.0f);
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  float* ap = acc.data();
  ParallelRows(pool, rows, parts,
               [=](int64_t p, int64_t r0, int64_t r1) { KgradRows(xp, gp, ap + p * block, r0, r1, d); });
  for (int64_t q = 0; q < block; ++q) {
    float v = 0.0f;
    for (int64_t p = 0; p < parts; ++p) v += acc[p * block + q];
    out[q] = v;
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDenseSmallCinFwd, ConvFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Nhwc>()
                                  .Arg<Nhwc>()
                                  .Ret<Nhwc>()
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetDenseSmallCinKgrad, ConvKgrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Nhwc>()
                                  .Arg<Nhwc>()
                                  .Ret<Nhwc>()
                                  .Attr<int64_t>("s")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));

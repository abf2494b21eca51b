// Train-mode BatchNorm followed by an activation, forward and backward, for XLA CPU through XLA FFI (see
// effnet_jax/ops/native.py and effnet_jax/ops/bn_act.py, whose XLA formulation computes the same function).
//
// x is (M, C) float32 (NHWC flattened; channels contiguous), statistics over the M rows:
//
//   forward:  mean, var (biased);  a = scale * rstd, b = bias - mean * a;  y = act(x * a + b)
//   backward: dz = act'(x * a + b) * g;  dbias = sum dz;  dscale = sum dz * xhat,  xhat = (x - mean) * rstd
//             dx = a * (dz - dbias / M - xhat * dscale / M)
//
// XLA CPU runs these column reductions and the elementwise passes around them as several separate loops over
// the activation; here the forward reads x twice (statistics, then y) and the backward reads x and g twice,
// every loop vectorised over channels. The statistics are two-pass within a cache-sized chunk of rows (chunk
// mean, then squares about it, both of differences from the chunk's first row) and chunks are merged in double
// (Chan et al.), so there is no E[x^2] - E[x]^2 cancellation and a large common offset loses nothing. Rows are
// split into parts over the calling thread and XLA's intra-op pool (parallel.h); parts are merged in
// a fixed order, so results do not depend on thread timing (the last bits may on the pool's size, which sets the
// parts).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using effnet::ParallelRows;

namespace {

using Rows = ffi::Buffer<ffi::F32, 2>;
using Vec = ffi::Buffer<ffi::F32, 1>;

enum Act : int64_t { kNone = 0, kSilu = 1, kRelu6 = 2 };

// Elementwise work runs on 16-float vectors (GCC/Clang vector extensions), so it vectorises whatever the
// auto-vectoriser makes of exp, and a channel count that is not a multiple of 16 ends in one partial vector.
constexpr int64_t kLanes = 16;
typedef float VF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline VF Splat(float v) { return VF{} + v; }

// n floats from p (the rest 0).
inline VF Load(const float* p, int64_t n) {
  VF v{};
  if (n == kLanes)
    std::memcpy(&v, p, sizeof v);  // a constant size: one vector load
  else
    std::memcpy(&v, p, n * sizeof(float));
  return v;
}

inline void Store(float* p, VF v, int64_t n) {
  if (n == kLanes)
    std::memcpy(p, &v, sizeof v);
  else
    std::memcpy(p, &v, n * sizeof(float));
}

// e^x to ~1 ulp (Cephes' expf) for x in [-87.3, 88.37], clamped outside (e^88.38 would round n to 128, an inf):
// x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, 2^n built in the exponent bits; n is rounded to
// nearest by adding and subtracting 1.5 * 2^23.
inline VF Exp(VF x) {
  x = x < Splat(-87.33654f) ? Splat(-87.33654f) : x;
  x = x > Splat(88.3762626647949f) ? Splat(88.3762626647949f) : x;
  const VF n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  VF r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  VF p = Splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  return p * (VF)bits;  // a vector cast reinterprets the bits
}

template <int A>
inline VF Activate(VF z) {
  if constexpr (A == kSilu) return z / (1.0f + Exp(-z));
  if constexpr (A == kRelu6) {
    z = z < Splat(0.0f) ? Splat(0.0f) : z;
    return z > Splat(6.0f) ? Splat(6.0f) : z;
  }
  return z;
}

// act'(z) * g, with jax.nn's conventions (relu6: 0 at both kinks).
template <int A>
inline VF ActGrad(VF z, VF g) {
  if constexpr (A == kSilu) {
    const VF s = 1.0f / (1.0f + Exp(-z));
    return g * s * (1.0f + z * (1.0f - s));
  }
  if constexpr (A == kRelu6) return (z > Splat(0.0f) && z < Splat(6.0f)) ? g : Splat(0.0f);
  return g;
}

// Rows per chunk: ~64 KiB of one operand, so a chunk's second look stays in L2.
int64_t ChunkRows(int64_t C) { return std::max<int64_t>(1, (64 << 10) / (4 * std::max<int64_t>(1, C))); }

int64_t Parts(ffi::ThreadPool& pool, int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(rows, std::max<int64_t>(1, pool.num_threads())));
}

// Per channel (mean, M2) of rows [r0, r1), merged chunk by chunk in double. Within a chunk the sums run over
// x - x0, x0 the chunk's first row: small terms, so a large common offset costs no precision in float32.
void StatsRows(const float* x, int64_t r0, int64_t r1, int64_t C, double* mean, double* m2) {
  std::vector<float> cm(C), cs(C);
  double count = 0.0;
  std::fill(mean, mean + C, 0.0);
  std::fill(m2, m2 + C, 0.0);
  const int64_t chunk = ChunkRows(C);
  for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
    const int64_t c1 = std::min(r1, c0 + chunk);
    const float n = static_cast<float>(c1 - c0);
    const float* __restrict x0 = x + c0 * C;
    float* __restrict m = cm.data();
    float* __restrict s = cs.data();
    std::fill(m, m + C, 0.0f);
    std::fill(s, s + C, 0.0f);
    for (int64_t r = c0 + 1; r < c1; ++r) {
      const float* __restrict xr = x + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) m[c] += xr[c] - x0[c];
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) m[c] /= n;  // the chunk mean minus x0
    for (int64_t r = c0; r < c1; ++r) {
      const float* __restrict xr = x + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float d = (xr[c] - x0[c]) - m[c];
        s[c] += d * d;
      }
    }
    const double total = count + n;
    for (int64_t c = 0; c < C; ++c) {
      const double delta = (static_cast<double>(x0[c]) + m[c]) - mean[c];
      mean[c] += delta * (n / total);
      m2[c] += static_cast<double>(s[c]) + delta * delta * (count * n / total);
    }
    count = total;
  }
}

template <int A>
void ForwardRows(const float* x, const float* a, const float* b, float* y, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t n = std::min(kLanes, C - c);
      Store(yr + c, Activate<A>(Load(xr + c, n) * Load(a + c, n) + Load(b + c, n)), n);
    }
  }
}

// Per-part sums of dz and dz * xhat: chunk partials in float vectors, added into double.
template <int A>
void GradSumsRows(const float* x, const float* g, const float* a, const float* b, const float* mean,
                  const float* rstd, int64_t r0, int64_t r1, int64_t C, double* sdz, double* sdzx) {
  const int64_t blocks = (C + kLanes - 1) / kLanes;
  std::vector<VF> pz(blocks), px(blocks);
  std::fill(sdz, sdz + C, 0.0);
  std::fill(sdzx, sdzx + C, 0.0);
  const int64_t chunk = ChunkRows(C);
  for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
    const int64_t c1 = std::min(r1, c0 + chunk);
    std::fill(pz.begin(), pz.end(), VF{});
    std::fill(px.begin(), px.end(), VF{});
    for (int64_t r = c0; r < c1; ++r) {
      const float* xr = x + r * C;
      const float* gr = g + r * C;
      for (int64_t k = 0, c = 0; c < C; ++k, c += kLanes) {
        const int64_t n = std::min(kLanes, C - c);
        const VF xv = Load(xr + c, n);
        const VF dz = ActGrad<A>(xv * Load(a + c, n) + Load(b + c, n), Load(gr + c, n));
        pz[k] += dz;
        px[k] += dz * ((xv - Load(mean + c, n)) * Load(rstd + c, n));
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      sdz[c] += pz[c / kLanes][c % kLanes];
      sdzx[c] += px[c / kLanes][c % kLanes];
    }
  }
}

template <int A>
void InputGradRows(const float* x, const float* g, const float* a, const float* b, const float* mean,
                   const float* rstd, const float* mdz, const float* mdzx, float* dx, int64_t r0, int64_t r1,
                   int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* gr = g + r * C;
    float* dr = dx + r * C;
    for (int64_t c = 0; c < C; c += kLanes) {
      const int64_t n = std::min(kLanes, C - c);
      const VF xv = Load(xr + c, n), av = Load(a + c, n);
      const VF dz = ActGrad<A>(xv * av + Load(b + c, n), Load(gr + c, n));
      const VF xhat = (xv - Load(mean + c, n)) * Load(rstd + c, n);
      Store(dr + c, av * (dz - Load(mdz + c, n) - xhat * Load(mdzx + c, n)), n);
    }
  }
}

// a = scale * rstd, b = bias - mean * a: the fold bn_act.py's `_affine` uses.
void Affine(const float* scale, const float* bias, const float* mean, const float* rstd, int64_t C, float* a,
            float* b) {
  for (int64_t c = 0; c < C; ++c) {
    a[c] = scale[c] * rstd[c];
    b[c] = bias[c] - mean[c] * a[c];
  }
}

ffi::Error BnActFwd(ffi::ThreadPool pool, Rows x, Vec scale, Vec bias, ffi::Result<Rows> y, ffi::Result<Vec> mean,
                    ffi::Result<Vec> var, ffi::Result<Vec> rstd, float eps, int64_t act) {
  const int64_t M = x.dimensions()[0], C = x.dimensions()[1];
  if (scale.dimensions()[0] != C || bias.dimensions()[0] != C || M < 1 || act < kNone || act > kRelu6)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "bn_act_fwd: inconsistent shapes or activation");
  const float* xp = x.typed_data();
  const int64_t parts = Parts(pool, M);
  std::vector<double> pm(parts * C), ps(parts * C);
  double* pmp = pm.data();
  double* psp = ps.data();
  ParallelRows(pool, M, parts,
               [=](int64_t p, int64_t r0, int64_t r1) { StatsRows(xp, r0, r1, C, pmp + p * C, psp + p * C); });
  float* mp = mean->typed_data();
  float* vp = var->typed_data();
  float* rp = rstd->typed_data();
  for (int64_t c = 0; c < C; ++c) {
    double mu = 0.0, m2 = 0.0, count = 0.0;
    for (int64_t p = 0; p < parts; ++p) {
      const double n = static_cast<double>(M * (p + 1) / parts - M * p / parts);
      if (n == 0.0) continue;
      const double total = count + n, delta = pm[p * C + c] - mu;
      mu += delta * (n / total);
      m2 += ps[p * C + c] + delta * delta * (count * n / total);
      count = total;
    }
    mp[c] = static_cast<float>(mu);
    vp[c] = static_cast<float>(m2 / static_cast<double>(M));
    rp[c] = 1.0f / std::sqrt(vp[c] + eps);
  }
  std::vector<float> a(C), b(C);
  Affine(scale.typed_data(), bias.typed_data(), mp, rp, C, a.data(), b.data());
  const float* ap = a.data();
  const float* bp = b.data();
  float* yp = y->typed_data();
  ParallelRows(pool, M, 8 * parts, [=](int64_t, int64_t r0, int64_t r1) {
    if (act == kSilu) ForwardRows<kSilu>(xp, ap, bp, yp, r0, r1, C);
    else if (act == kRelu6) ForwardRows<kRelu6>(xp, ap, bp, yp, r0, r1, C);
    else ForwardRows<kNone>(xp, ap, bp, yp, r0, r1, C);
  });
  return ffi::Error::Success();
}

ffi::Error BnActBwd(ffi::ThreadPool pool, Rows x, Rows g, Vec scale, Vec bias, Vec mean, Vec rstd,
                    ffi::Result<Rows> dx, ffi::Result<Vec> dscale, ffi::Result<Vec> dbias, int64_t act) {
  const int64_t M = x.dimensions()[0], C = x.dimensions()[1];
  if (g.dimensions()[0] != M || g.dimensions()[1] != C || scale.dimensions()[0] != C || M < 1 || act < kNone ||
      act > kRelu6)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "bn_act_bwd: inconsistent shapes or activation");
  const float* xp = x.typed_data();
  const float* gp = g.typed_data();
  const float* mp = mean.typed_data();
  const float* rp = rstd.typed_data();
  std::vector<float> a(C), b(C);
  Affine(scale.typed_data(), bias.typed_data(), mp, rp, C, a.data(), b.data());
  const float* ap = a.data();
  const float* bp = b.data();
  const int64_t parts = Parts(pool, M);
  std::vector<double> pz(parts * C), px(parts * C);
  double* pzp = pz.data();
  double* pxp = px.data();
  ParallelRows(pool, M, parts, [=](int64_t p, int64_t r0, int64_t r1) {
    double* s1 = pzp + p * C;
    double* s2 = pxp + p * C;
    if (act == kSilu) GradSumsRows<kSilu>(xp, gp, ap, bp, mp, rp, r0, r1, C, s1, s2);
    else if (act == kRelu6) GradSumsRows<kRelu6>(xp, gp, ap, bp, mp, rp, r0, r1, C, s1, s2);
    else GradSumsRows<kNone>(xp, gp, ap, bp, mp, rp, r0, r1, C, s1, s2);
  });
  float* dsp = dscale->typed_data();
  float* dbp = dbias->typed_data();
  std::vector<float> mdz(C), mdzx(C);
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t p = 0; p < parts; ++p) {
      s1 += pz[p * C + c];
      s2 += px[p * C + c];
    }
    dbp[c] = static_cast<float>(s1);
    dsp[c] = static_cast<float>(s2);
    mdz[c] = static_cast<float>(s1 / static_cast<double>(M));
    mdzx[c] = static_cast<float>(s2 / static_cast<double>(M));
  }
  const float* mzp = mdz.data();
  const float* mxp = mdzx.data();
  float* dxp = dx->typed_data();
  ParallelRows(pool, M, 8 * parts, [=](int64_t, int64_t r0, int64_t r1) {
    if (act == kSilu) InputGradRows<kSilu>(xp, gp, ap, bp, mp, rp, mzp, mxp, dxp, r0, r1, C);
    else if (act == kRelu6) InputGradRows<kRelu6>(xp, gp, ap, bp, mp, rp, mzp, mxp, dxp, r0, r1, C);
    else InputGradRows<kNone>(xp, gp, ap, bp, mp, rp, mzp, mxp, dxp, r0, r1, C);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetBnActFwd, BnActFwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Rows>()
                                  .Arg<Vec>()
                                  .Arg<Vec>()
                                  .Ret<Rows>()
                                  .Ret<Vec>()
                                  .Ret<Vec>()
                                  .Ret<Vec>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("act"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EffnetBnActBwd, BnActBwd,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Rows>()
                                  .Arg<Rows>()
                                  .Arg<Vec>()
                                  .Arg<Vec>()
                                  .Arg<Vec>()
                                  .Arg<Vec>()
                                  .Ret<Rows>()
                                  .Ret<Vec>()
                                  .Ret<Vec>()
                                  .Attr<int64_t>("act"));

// qmatmul prefill (more rows of x than the decode kernels take, decode_max_m), included by
// qmatmul_kernels.h inside the ISA namespace (it uses that file's helpers and V).
//
// A blocked GEMM; "packing B" is the dequantization of a KC x NC slab into an fp32 panel (NR = 2W
// columns wide) that stays in cache, then an MR x NR FMA micro-kernel. x is converted to fp32 and
// packed once per call into MR-row panels, k-major, so the micro-kernel's broadcasts read one
// sequential stream (rows of x K apart alias in L1): about 7% faster at M=512, K=N=4096 on Zen 1,
// for an fp32 copy of x. PrefillTiles (the work split) and store_micro serve the -a8 GEMM too
// (qmatmul_dot_prefill.h).
#pragma once

constexpr int kMR = 6;
constexpr int kNR = 2 * V::W;
constexpr int64_t kKC = 256;  // a multiple of every group size: a K block never splits a group
constexpr int64_t kNC = kNR * 8;

// A micro-kernel's MR x kNR result (row i: c0[i], c1[i]) into C (rows ldc apart; its first nc
// columns), added to what C holds when accumulate. Shared with the -a8 GEMM (qmatmul_dot_prefill.h).
template <int MR>
static inline void store_micro(typename V::F (&c0)[MR], typename V::F (&c1)[MR], float* C, int64_t ldc, int nc,
                               bool accumulate) {
  constexpr int W = V::W;
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if (nc == kNR) {
      if (accumulate) { c0[i] = V::add(c0[i], V::load(c)); c1[i] = V::add(c1[i], V::load(c + W)); }
      V::store(c, c0[i]);
      V::store(c + W, c1[i]);
    } else {
      float t[kNR];
      V::store(t, c0[i]);
      V::store(t + W, c1[i]);
      for (int j = 0; j < nc; ++j) c[j] = accumulate ? c[j] + t[j] : t[j];
    }
  }
}

// C[MR x nc] (+)= A[MR x kc] * Bp[kc x NR]; A packed kMR-wide (A[k * kMR + i]), Bp packed
// NR-wide, C rows ldc apart.
template <int MR>
static inline void micro(const float* A, const float* Bp, int64_t kc, float* C, int64_t ldc, int nc,
                         bool accumulate) {
  using F = typename V::F;
  constexpr int W = V::W;
  F c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) { c0[i] = V::zero(); c1[i] = V::zero(); }
  for (int64_t k = 0; k < kc; ++k) {
    F b0 = V::load(Bp + k * kNR), b1 = V::load(Bp + k * kNR + W);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      F av = V::set1(A[k * kMR + i]);
      c0[i] = V::fma(av, b0, c0[i]);
      c1[i] = V::fma(av, b1, c1[i]);
    }
  }
  store_micro<MR>(c0, c1, C, ldc, nc, accumulate);
}

static void micro_rows(int mr, const float* A, const float* Bp, int64_t kc, float* C, int64_t ldc, int nc, bool acc) {
  switch (mr) {
    case 6: micro<6>(A, Bp, kc, C, ldc, nc, acc); break;
    case 5: micro<5>(A, Bp, kc, C, ldc, nc, acc); break;
    case 4: micro<4>(A, Bp, kc, C, ldc, nc, acc); break;
    case 3: micro<3>(A, Bp, kc, C, ldc, nc, acc); break;
    case 2: micro<2>(A, Bp, kc, C, ldc, nc, acc); break;
    default: micro<1>(A, Bp, kc, C, ldc, nc, acc); break;
  }
}

// One panel column: row n's codes k0..k0+kc-1, dequantized into dst[k * kNR] (scalar; the
// columns of a panel narrower than W, and the last codes of a K block that is not a multiple of
// 8, land here). srow holds row n's scales.
static void dequant_column(const QmmArgs& a, int64_t n, int64_t k0, int64_t k1, int64_t kbase, const float* srow,
                           float* dst) {
  if (a.bits == 8) {
    const int8_t* q = static_cast<const int8_t*>(a.qw) + n * a.K;
    for (int64_t k = k0; k < k1; ++k) dst[(k - kbase) * kNR] = static_cast<float>(q[k]) * srow[0];
    return;
  }
  const int64_t G = a.group, ng = (a.K + G - 1) / G;
  const uint8_t* q = static_cast<const uint8_t*>(a.qw) + n * (ng * G / 2);
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t g = k / G;
    const float z = static_cast<float>(zero_point(a, n, ng, g));
    const int code = (q[k >> 1] >> ((k & 1) * 4)) & 15;
    dst[(k - kbase) * kNR] = std::fma(static_cast<float>(code), srow[g], -(srow[g] * z));
  }
}

// Dequantize W[n0:n0+nc, k0:k0+kc] into Bp: panel j (columns j*NR..) is kc x NR, zero-padded.
// Vectorized across rows: lane l holds row n+l, each row's codes are read 16 bytes at a time
// and transposed to 4 bytes a lane (V::gather16; gather4 for the last few) and peeled off low
// bits first, so one step gives one k for W rows, one store into the panel. Every value is one
// fma: code * s - s * z (INT4), or u * s - 128 * s with u = q + 128 (INT8: the same rounding as
// q * s, since 128 * s is exact).
static void dequant_panel(const QmmArgs& a, int64_t n0, int nc, int64_t k0, int64_t kc, float* Bp, float* srow) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::W;
  const int npan = (nc + kNR - 1) / kNR;
  const int64_t G = a.group, ng = a.bits == 4 ? (a.K + G - 1) / G : 1, kend = k0 + kc;
  for (int j = nc; j < npan * kNR; ++j)
    for (int64_t k = 0; k < kc; ++k) Bp[(j / kNR) * kc * kNR + k * kNR + j % kNR] = 0.f;
  for (int j0 = 0; j0 < nc; j0 += W) {
    const int nr = std::min(W, nc - j0);
    const int64_t n = n0 + j0;
    float* dst = Bp + (j0 / kNR) * kc * kNR + j0 % kNR;
    for (int l = 0; l < nr; ++l) row_scales(a, n + l, ng, srow + l * ng);
    int64_t kv = k0;  // codes before kv: vectorized; from kv on: dequant_column
    if (nr == W) {
      alignas(64) float st[W], zt[W];
      if (a.bits == 8) {
        const auto* q = reinterpret_cast<const uint8_t*>(static_cast<const int8_t*>(a.qw) + n * a.K);
        for (int l = 0; l < W; ++l) { st[l] = srow[l * ng]; zt[l] = -128.f * st[l]; }
        const F s = V::load(st), off = V::load(zt);
        auto four = [&](I v, int64_t k) {  // codes k..k+3, 4 bytes a lane
          v = V::flip_bytes(v);
          float* d = dst + (k - k0) * kNR;
          V::store(d, V::fma(cvt_and(v, 255), s, off));
          V::store(d + kNR, V::fma(cvt_and(V::template srl<8>(v), 255), s, off));
          V::store(d + 2 * kNR, V::fma(cvt_and(V::template srl<16>(v), 255), s, off));
          V::store(d + 3 * kNR, V::fma(cvt_and(V::template srl<24>(v), 255), s, off));
        };
        for (; kv + 16 <= kend; kv += 16) {
          I u[4];
          V::gather16(q + kv, a.K, u);
          for (int j = 0; j < 4; ++j) four(u[j], kv + 4 * j);
        }
        for (; kv + 4 <= kend; kv += 4) four(gather4(q + kv, a.K), kv);
      } else {
        const int64_t row_bytes = ng * G / 2;
        const auto* q = static_cast<const uint8_t*>(a.qw) + n * row_bytes;
        for (; kv < kend; kv += G) {  // one group per pass (G and k0 are multiples of 8)
          const int64_t g = kv / G;
          for (int l = 0; l < W; ++l) {
            st[l] = srow[l * ng + g];
            zt[l] = -(st[l] * static_cast<float>(zero_point(a, n + l, ng, g)));
          }
          const F s = V::load(st), off = V::load(zt);
          auto eight = [&](I v, int64_t k) {  // codes k..k+7, 4 bytes a lane
            float* d = dst + (k - k0) * kNR;
            for (int c = 0; c < 8; ++c, d += kNR) {
              V::store(d, V::fma(cvt_and(v, 15), s, off));
              v = V::template srl<4>(v);
            }
          };
          const int64_t gend = std::min(kv + G, kend);
          int64_t k = kv;
          for (; k + 32 <= gend; k += 32) {
            I u[4];
            V::gather16(q + k / 2, row_bytes, u);
            for (int j = 0; j < 4; ++j) eight(u[j], k + 8 * j);
          }
          for (; k + 8 <= gend; k += 8) eight(gather4(q + k / 2, row_bytes), k);
          if (k < gend) { kv = k; break; }  // the K block's last few codes (K not a multiple of 8)
        }
      }
    }
    if (kv < kend)
      for (int l = 0; l < nr; ++l) dequant_column(a, n + l, kv, kend, k0, srow + l * ng, dst + l);
  }
}

// The prefill kernels' work split: tiles of NC columns of y by mblk rows (a multiple of MR), and
// what they do after the K loop.
struct PrefillTiles {
  int64_t M, N, NC, nnb, nmb = 1, mblk;  // NC: columns a tile (kNC unless the caller says)
  bool direct;  // y is fp32: written in place by the micro-kernel, else through an NC-wide buffer
  PrefillTiles(const QmmArgs& a, int MR, int64_t nc_ = kNC)
      : M(a.M), N(a.N), NC(nc_), nnb((a.N + nc_ - 1) / nc_), direct(a.ydt == DType::F32) {
    // Split M too when there are too few N blocks to keep every thread busy.
    const int nt = threads_for(a);
    if (nnb < 2 * nt) nmb = std::min<int64_t>((2 * nt + nnb - 1) / nnb, (M + 47) / 48);
    mblk = ((M + nmb - 1) / nmb + MR - 1) / MR * MR;
    nmb = (M + mblk - 1) / mblk;
  }
  int64_t ntiles() const { return nnb * nmb; }
  int64_t n0(int64_t t) const { return (t / nmb) * NC; }
  int64_t mb0(int64_t t) const { return (t % nmb) * mblk; }
  int nc(int64_t t) const { return static_cast<int>(std::min(NC, N - n0(t))); }
  int mrows(int64_t t) const { return static_cast<int>(std::min(mblk, M - mb0(t))); }
  // Where tile t's results go (rows ldc() apart): into y when it is fp32, else into buf (mblk x NC).
  float* c_of(const QmmArgs& a, int64_t t, float* buf) const {
    return direct ? static_cast<float*>(a.y) + mb0(t) * a.ldy + n0(t) : buf;
  }
  int64_t ldc(const QmmArgs& a) const { return direct ? a.ldy : NC; }
  // Tile t whole: its first column and row, its columns and rows, and where its results go.
  struct Tile {
    int64_t n0, mb0;
    int nc, mrows;
    float* C;
    int64_t ldc;
  };
  Tile tile(const QmmArgs& a, int64_t t, float* buf) const {
    return {n0(t), mb0(t), nc(t), mrows(t), c_of(a, t, buf), ldc(a)};
  }
  // Tile t's finished rows C (ldc apart): rows whose nan_row[m] is set become NaN, the bias is
  // added, and y gets them in its dtype when it is not fp32.
  void epilogue(const QmmArgs& a, float* C, int64_t ldc, int64_t t, const uint8_t* nan_row) const {
    const int64_t c0 = n0(t), m0 = mb0(t);
    const int n = nc(t), mr = mrows(t);
    if (!a.bias && direct && !nan_row) return;
    std::vector<float> b(n, 0.f);
    if (a.bias) for (int j = 0; j < n; ++j) b[j] = load_one(a.bias, a.ydt, c0 + j);
    for (int64_t i = 0; i < mr; ++i) {
      float* c = C + i * ldc;
      if (nan_row && nan_row[m0 + i]) for (int j = 0; j < n; ++j) c[j] = NAN;
      else for (int j = 0; j < n; ++j) c[j] += b[j];
      if (!direct) store_row(c, a.ydt, n, static_cast<char*>(row_ptr(a.y, a.ydt, m0 + i, a.ldy)) + c0 * dsize(a.ydt));
    }
  }
};

static void prefill(const QmmArgs& a) {
  const int64_t M = a.M, K = a.K;
  const int nt = threads_for(a);
  // x as fp32, packed once for the micro-kernel: panel p holds rows kMR*p.. interleaved,
  // xpk[(p * K + k) * kMR + i] = x[kMR * p + i][k] (rows past M stay zero and are never read).
  const int64_t npanel = (M + kMR - 1) / kMR;
  AlignedVec<float> xpk(npanel * K * kMR);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> row(K);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, K, row.data());
      float* dst = xpk.data() + (m / kMR) * K * kMR + m % kMR;
      for (int64_t k = 0; k < K; ++k) dst[k * kMR] = row[k];
    }
  }
  const PrefillTiles pt(a, kMR);
  const int64_t ng = a.bits == 4 ? (K + a.group - 1) / a.group : 1;
#pragma omp parallel num_threads(nt)
  {
    AlignedVec<float> Bp(kKC * kNC), srow(V::W * ng), Cbuf(pt.direct ? 0 : pt.mblk * kNC);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < pt.ntiles(); ++t) {
      const PrefillTiles::Tile tl = pt.tile(a, t, Cbuf.data());
      for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int64_t kc = std::min(kKC, K - k0);
        dequant_panel(a, tl.n0, tl.nc, k0, kc, Bp.data(), srow.data());
        for (int64_t i0 = 0; i0 < tl.mrows; i0 += kMR) {
          const int mr = static_cast<int>(std::min<int64_t>(kMR, tl.mrows - i0));
          for (int j0 = 0; j0 < tl.nc; j0 += kNR)
            micro_rows(mr, xpk.data() + ((tl.mb0 + i0) / kMR * K + k0) * kMR, Bp.data() + (j0 / kNR) * kc * kNR, kc,
                       tl.C + i0 * tl.ldc + j0, tl.ldc, std::min(kNR, tl.nc - j0), k0 > 0);
        }
      }
      pt.epilogue(a, tl.C, tl.ldc, t, nullptr);
    }
  }
}

// GEMMs on dot-product instructions, for more rows of x than the decode kernels take, included
// by qmatmul_kernels.h inside the ISA namespace after qmatmul_a8.h (whose act8_row quantizes x):
//   -a8 (INT4 and INT8 weights, int8 x) on AVX512-VNNI's vpdpbusd, and
//   weight-only INT4 and INT8 with bf16 x on AVX512-BF16's vdpbf16ps.
// Only builds with V::kVnni (V::kBf16Dot) compile them, and they run only where vnni_dot()
// (bf16_dot()) says the CPU has the instruction; elsewhere the fp32 kernels run (for -a8 on
// x's q * s, act8_fp32_copy). Both share the layout, the slabs and the driver (prefill_dot).
// Where the AMX GEMM runs (qmatmul_amx.h, amx()), it takes -a8 past 8 rows and weight-only prefill
// before these.
//
// -a8:
// y[m, n] = sum_f sw[n,f] sx[m,f] sum_{k in f} w[n,k] q[m,k]
//          = sum_f sw[n,f] sx[m,f] (sum_{k in f} w[n,k] (q[m,k] + 128) - 128 sum_{k in f} w[n,k])
// over scale folds f of FU codes: an INT4 group (FU = G; w = code - zero-point, in [-15, 15]), or
// for INT8 kKC codes (FU = kKC, the last fold shorter; w = the int8 code, sw the row's scale). vpdpbusd multiplies 4
// unsigned bytes by 4 signed ones and adds them to an s32 lane (64 products an instruction, where
// an fp32 FMA does 16): x's codes go in as q + 128 (unsigned), the weights' as w (signed), and each
// fold's sums start from -128 sum w (a per-column constant, computed when W is packed). The s32
// sums are exact (at most 256 x 255 x 127 a fold); the fold converts them and multiplies by the
// two scales: no zero-point term is left for it.
//
// Layout, per slab of W (NC columns by all of K, see kA8SlabBytes; packed by each thread for its
// tile, as the fp32 prefill's dequant_panel does): panel j (kNR columns) holds quad kq (codes
// 4kq..4kq+3) of column c at Bq[(j * nq + kq) * kNR + c], one 32-bit lane per column, so one
// vector load gives W columns. INT8's folds are kKC codes, the last one shorter.
// x: quads of kA8MR rows interleaved, xq[(p * Kq / 4 + kq) * kA8MR + i], each broadcast to
// every lane. A micro-kernel keeps kA8MR x kNR s32 sums and as many fp32 totals in registers.
//
// bf16 x:
// y[m, n] = sum_f sw[n,f] sum_{k in f} x[m,k] w[n,k], w = code - zero-point (INT4) or the int8
// code: small integers, exact in bf16, so each vdpbf16ps product is exact and only the fp32 sums
// round (as the fp32 GEMM's FMAs do); each fold (an INT4 group; INT8: the whole row, one scale)
// scales its sums once. The same layout with pairs of codes (kp: codes 2kp, 2kp+1, as bf16 in the
// low and high half of a lane) where -a8 has quads; its sums are fp32 from the start, with no
// correction term.
#pragma once

constexpr int kA8MR = 6;  // prefill_dot's switch covers 1 to 6
// A tile's slab of W spans all of K and as many columns (a multiple of kNR, at most kNC) as fit
// in this many packed bytes: 64 columns at K = 4096. Slabs of kKC codes by kNC columns, as the
// fp32 GEMM has them, ran 1.3-2.0x slower at M = 512 (bench/RESULTS.md, sixteenth session): each
// tile's C was read and written once per K block, and W was read 256 bytes a row at a time.
constexpr int64_t kA8SlabBytes = 256 << 10;

// The plan of either GEMM (-a8, or bf16 x: see each field); a slab spans all of K, so a packed
// column holds a row of W: nq lanes in nf folds of qpf lanes (the last fold may be shorter).
struct A8GemmPlan {
  int64_t Kq;                 // K padded: ng * G (INT4), K rounded up to 4 (INT8; bf16: to 2)
  int64_t FU, nf;             // codes per scale fold (G; INT8: kKC, bf16: Kq) and folds per row
  int64_t nq, qpf;            // 32-bit lanes per row (Kq / 4 quads; bf16: Kq / 2 pairs) and per fold
  AlignedVec<uint32_t> xq;    // [ceil(M / kA8MR)][nq][kA8MR]: x's lanes (-a8: its int8 codes + 128)
  std::vector<float> sx;      // [M][nf]: x's scale in fold f (-a8 only)
  std::vector<uint8_t> bad;   // [M]: x's row holds a NaN or an Inf (its outputs are NaN; -a8 only)
};

// Lanes of per codes each (4: -a8's quads, 2: bf16 pairs) for p.Kq and p.FU.
static inline void plan_lanes(A8GemmPlan& p, int per) {
  p.nq = p.Kq / per;
  p.qpf = std::min(p.FU, p.Kq) / per;
}

static inline void a8_gemm_plan(const QmmArgs& a, A8GemmPlan& p) {
  const int64_t K = a.K, M = a.M, B = a.bits == 4 ? a.group : K;  // x's block: the weight's group, or the row
  p.Kq = a.bits == 4 ? (K + B - 1) / B * B : (K + 3) / 4 * 4;
  p.FU = a.bits == 4 ? B : kKC;
  p.nf = (p.Kq + p.FU - 1) / p.FU;
  plan_lanes(p, 4);
  const int64_t nq = p.nq, npanel = (M + kA8MR - 1) / kA8MR;
  p.xq.assign(npanel * nq * kA8MR, 0);
  p.sx.assign(M * p.nf, 0.f);
  p.bad.assign(M, 0);
#pragma omp parallel num_threads(threads_for(a))
  {
    std::vector<float> xr(K), s((K + B - 1) / B);
    std::vector<int8_t> q(std::max(p.Kq, (K + B - 1) / B * B));
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, K, xr.data());
      std::fill(q.begin(), q.end(), 0);
      p.bad[m] = !act8_row(xr.data(), K, B, q.data(), s.data());
      for (int64_t f = 0; f < p.nf; ++f) p.sx[m * p.nf + f] = s[f * p.FU / B];
      uint32_t* dst = p.xq.data() + (m / kA8MR) * nq * kA8MR + m % kA8MR;
      for (int64_t kq = 0; kq < nq; ++kq) {
        uint32_t u;
        std::memcpy(&u, q.data() + 4 * kq, 4);
        dst[kq * kA8MR] = u ^ 0x80808080u;  // q + 128 in each byte
      }
    }
  }
}

static inline float scale_at(const QmmArgs& a, int64_t i) {
  return a.sdt == DType::F32 ? static_cast<const float*>(a.scales)[i]
                             : f16_to_f32(static_cast<const uint16_t*>(a.scales)[i]);
}

// Packing a tile's slab of W (its columns, all of K) into Bq (layout above), and per panel and
// fold the columns' scales into sw[(j * nf + f) * kNR + c] and (-a8) -128 sum w into corr
// likewise; columns past nc are zero throughout. dst, s, cs below point at a column's first lane,
// scale and correction (stride kNR).

// One column (row n of W; n < 0: a padding column): the plain loop, for the columns past the last
// full group of W (a8_pack_cols).
static inline void a8_pack_col(const QmmArgs& a, const A8GemmPlan& p, int64_t n, uint32_t* dst,
                               float* s, int32_t* cs) {
  if (n < 0) {
    for (int64_t kq = 0; kq < p.nq; ++kq) dst[kq * kNR] = 0;
    for (int64_t f = 0; f < p.nf; ++f) s[f * kNR] = 0.f, cs[f * kNR] = 0;
    return;
  }
  auto byte_sum = [](uint32_t u) { return int32_t{int8_t(u)} + int8_t(u >> 8) + int8_t(u >> 16) + int8_t(u >> 24); };
  if (a.bits == 4) {
    const int64_t ng = p.Kq / a.group;
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * (p.Kq / 2);
    for (int64_t f = 0; f < p.nf; ++f) {
      const uint64_t z = zero_point(a, n, ng, f) * 0x0101010101010101ull;
      int32_t sum = 0;
      for (int64_t kq = f * p.qpf; kq < (f + 1) * p.qpf; kq += 2) {  // 8 codes (4 bytes) to two quads
        uint32_t u;
        std::memcpy(&u, q + 2 * kq, 4);
        uint64_t v = u;  // nibble i to byte i
        v = (v | (v << 16)) & 0x0000FFFF0000FFFFull;
        v = (v | (v << 8)) & 0x00FF00FF00FF00FFull;
        v = (v | (v << 4)) & 0x0F0F0F0F0F0F0F0Full;
        v = ((v | 0x8080808080808080ull) - z) ^ 0x8080808080808080ull;  // each byte code - z, no borrows
        dst[kq * kNR] = static_cast<uint32_t>(v);
        dst[(kq + 1) * kNR] = static_cast<uint32_t>(v >> 32);
        sum += byte_sum(static_cast<uint32_t>(v)) + byte_sum(static_cast<uint32_t>(v >> 32));
      }
      s[f * kNR] = scale_at(a, n * ng + f);
      cs[f * kNR] = -128 * sum;
    }
  } else {
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * a.K;
    for (int64_t f = 0; f < p.nf; ++f) {
      int32_t sum = 0;
      for (int64_t kq = f * p.qpf; kq < std::min((f + 1) * p.qpf, p.nq); ++kq) {
        const int64_t k = 4 * kq;
        uint32_t u = 0;  // codes past K are 0
        std::memcpy(&u, q + k, static_cast<size_t>(std::clamp<int64_t>(a.K - k, 0, 4)));
        dst[kq * kNR] = u;
        sum += byte_sum(u);
      }
      s[f * kNR] = scale_at(a, n);
      cs[f * kNR] = -128 * sum;
    }
  }
}

// Nibble i of each 32-bit lane's low 16 bits (its high 16 bits 0) to byte i: 4 INT4 codes in k order.
template <class VV>
static inline typename VV::I nibble_bytes(typename VV::I v) {
  v = VV::band(VV::bor(v, VV::template sll<8>(v)), 0x00FF00FFu);
  return VV::band(VV::bor(v, VV::template sll<4>(v)), 0x0F0F0F0Fu);
}

// Each byte's code (0..15) minus zb's byte (its zero-point, 0..15) as s8: (code | 128) - z, so that
// no byte borrows from the next, then the top bit flipped back.
template <class VV>
static inline typename VV::I codes_minus_zero(typename VV::I codes, typename VV::I zb) {
  return VV::flip_bytes(VV::sub32(VV::bor(codes, VV::set1i(static_cast<int32_t>(0x80808080u))), zb));
}

// W columns at once (rows n..n+W-1 of W), what a8_pack_col does for one: lane l of every vector
// is row n + l, so each store writes a quad of W columns. The byte sums come from vpdpbusd by
// ones. The plain loop took longer than the GEMM itself at M < 32 (bench/RESULTS.md).
template <class VV = V>
static void a8_pack_cols(const QmmArgs& a, const A8GemmPlan& p, int64_t n, uint32_t* dst, float* s,
                         int32_t* cs) {
  using I = typename VV::I;
  constexpr int W = VV::W;
  auto store = [](void* at, I v) { VV::storei(static_cast<uint8_t*>(at), v); };
  const I ones = VV::set1i(0x01010101);
  alignas(64) int32_t t[W], tz[W];
  if (a.bits == 4) {
    const int64_t ng = p.Kq / a.group, row_bytes = p.Kq / 2;
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * row_bytes;
    for (int64_t f = 0; f < p.nf; ++f) {
      for (int l = 0; l < W; ++l) {
        const int32_t z = zero_point(a, n + l, ng, f);
        t[l] = z * 0x01010101;        // in each byte
        tz[l] = 4 * p.qpf * z;       // times the fold's codes
      }
      const I zb = VV::loadi(reinterpret_cast<const uint8_t*>(t)), zc = VV::loadi(reinterpret_cast<const uint8_t*>(tz));
      I sum = VV::zero_i();
      for (int64_t kq = f * p.qpf; kq < (f + 1) * p.qpf; kq += 8) {  // 32 codes (16 bytes) a row; G % 32 == 0
        I u[4];  // 8 codes a lane, to two quads
        VV::gather16(q + 2 * kq, row_bytes, u);
        for (int j = 0; j < 4; ++j) {
          const I lo = nibble_bytes<VV>(VV::band(u[j], 0xFFFFu)), hi = nibble_bytes<VV>(VV::template srl<16>(u[j]));
          sum = VV::dpbusd(VV::dpbusd(sum, lo, ones), hi, ones);
          store(dst + (kq + 2 * j) * kNR, codes_minus_zero<VV>(lo, zb));
          store(dst + (kq + 2 * j + 1) * kNR, codes_minus_zero<VV>(hi, zb));
        }
      }
      store(cs + f * kNR, VV::template sll<7>(VV::sub32(zc, sum)));  // -128 (sum c - 4 qpf z)
      for (int l = 0; l < W; ++l) s[f * kNR + l] = scale_at(a, (n + l) * ng + f);
    }
  } else {
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * a.K;
    for (int64_t f = 0; f < p.nf; ++f) {
      I sum = VV::zero_i();
      const int64_t kend = std::min((f + 1) * p.qpf, p.nq);
      int64_t kq = f * p.qpf;
      for (; kq + 4 <= kend && 4 * kq + 16 <= a.K; kq += 4) {  // 16 codes a row
        I u[4];
        VV::gather16(q + 4 * kq, a.K, u);
        for (int j = 0; j < 4; ++j) {
          store(dst + (kq + j) * kNR, u[j]);
          sum = VV::dpbusd(sum, ones, u[j]);
        }
      }
      for (; kq < kend; ++kq) {  // the fold's last quads
        const int64_t k = 4 * kq;
        I u;
        if (k + 4 <= a.K) {
          u = gather4(q + k, a.K);
        } else {  // the last quad of a K not a multiple of 4: codes past K are 0
          for (int l = 0; l < W; ++l) {
            t[l] = 0;
            std::memcpy(&t[l], q + l * a.K + k, static_cast<size_t>(std::max<int64_t>(a.K - k, 0)));
          }
          u = VV::loadi(reinterpret_cast<const uint8_t*>(t));
        }
        store(dst + kq * kNR, u);
        sum = VV::dpbusd(sum, ones, u);
      }
      store(cs + f * kNR, VV::sub32(VV::zero_i(), VV::template sll<7>(sum)));
      for (int l = 0; l < W; ++l) s[f * kNR + l] = scale_at(a, n + l);
    }
  }
}

// ---- bf16 x ------------------------------------------------------------------------------------
// x's rows as pairs of bf16 (as given), kA8MR rows interleaved like -a8's quads; zero past K.
static inline void bf16_gemm_plan(const QmmArgs& a, A8GemmPlan& p) {
  const int64_t K = a.K, M = a.M;
  p.Kq = a.bits == 4 ? (K + a.group - 1) / a.group * a.group : (K + 1) / 2 * 2;
  p.FU = a.bits == 4 ? a.group : p.Kq;  // INT8: one scale a row, one fold
  p.nf = p.Kq / p.FU;
  plan_lanes(p, 2);
  const int64_t np = p.nq, npanel = (M + kA8MR - 1) / kA8MR;
  p.xq.assign(npanel * np * kA8MR, 0);
  p.sx.clear();
  p.bad.clear();
#pragma omp parallel for num_threads(threads_for(a)) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const auto* xs = static_cast<const uint16_t*>(row_ptr(a.x, a.xdt, m, a.ldx));
    uint32_t* dst = p.xq.data() + (m / kA8MR) * np * kA8MR + m % kA8MR;
    for (int64_t kp = 0; kp < np; ++kp) {
      const int64_t k = 2 * kp;
      const uint32_t lo = k < K ? xs[k] : 0, hi = k + 1 < K ? xs[k + 1] : 0;
      dst[kp * kA8MR] = lo | hi << 16;
    }
  }
}

static inline uint32_t bf16_pair(int32_t lo, int32_t hi) {  // two small integers as bf16 (exact)
  return uint32_t{f32_to_bf16(static_cast<float>(lo))} | uint32_t{f32_to_bf16(static_cast<float>(hi))} << 16;
}

// One column as bf16 pairs code - z (INT4) or code (INT8), and its scales (a8_pack_col's twin;
// n < 0: a padding column).
static inline void bf16_pack_col(const QmmArgs& a, const A8GemmPlan& p, int64_t n, uint32_t* dst,
                                 float* s) {
  if (n < 0) {
    for (int64_t kp = 0; kp < p.nq; ++kp) dst[kp * kNR] = 0;
    for (int64_t f = 0; f < p.nf; ++f) s[f * kNR] = 0.f;
    return;
  }
  if (a.bits == 4) {
    const int64_t ng = p.Kq / a.group;
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * (p.Kq / 2);
    for (int64_t kp = 0; kp < p.nq; ++kp) {
      const int32_t z = zero_point(a, n, ng, (2 * kp) / a.group);
      dst[kp * kNR] = bf16_pair((q[kp] & 15) - z, (q[kp] >> 4) - z);
    }
    for (int64_t f = 0; f < p.nf; ++f) s[f * kNR] = scale_at(a, n * ng + f);
  } else {
    const auto* q = static_cast<const int8_t*>(a.qw) + n * a.K;
    for (int64_t kp = 0; kp < p.nq; ++kp) {
      const int64_t k = 2 * kp;
      dst[kp * kNR] = bf16_pair(k < a.K ? q[k] : 0, k + 1 < a.K ? q[k + 1] : 0);
    }
    s[0] = scale_at(a, n);
  }
}

// W columns at once (rows n..n+W-1 of W), what bf16_pack_col does for one: lane l is row n + l.
template <class VV = V>
static void bf16_pack_cols(const QmmArgs& a, const A8GemmPlan& p, int64_t n, uint32_t* dst,
                           float* s) {
  using I = typename VV::I;
  constexpr int W = VV::W;
  auto store = [](void* at, I v) { VV::storei(static_cast<uint8_t*>(at), v); };
  auto pair = [](I lo, I hi) {  // lanes of small integers as bf16, lo's in the low half
    return VV::bor(VV::template srl<16>(VV::asi(VV::cvt(lo))), VV::band(VV::asi(VV::cvt(hi)), 0xFFFF0000u));
  };
  if (a.bits == 4) {
    const int64_t ng = p.Kq / a.group, row_bytes = p.Kq / 2;
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * row_bytes;
    alignas(64) int32_t t[W];
    for (int64_t f = 0; f < p.nf; ++f) {
      for (int l = 0; l < W; ++l) t[l] = zero_point(a, n + l, ng, f);
      const I z = VV::loadi(reinterpret_cast<const uint8_t*>(t));
      for (int64_t kp = f * p.qpf; kp < (f + 1) * p.qpf; kp += 16) {  // 32 codes (16 bytes) a row; G % 32 == 0
        I u[4];
        VV::gather16(q + kp, row_bytes, u);
        for (int j = 0; j < 4; ++j)
          for (int b = 0; b < 4; ++b, u[j] = VV::template srl<8>(u[j]))  // byte b: pair kp + 4j + b
            store(dst + (kp + 4 * j + b) * kNR,
                  pair(VV::sub32(VV::band(u[j], 15u), z), VV::sub32(VV::band(VV::template srl<4>(u[j]), 15u), z)));
      }
      for (int l = 0; l < W; ++l) s[f * kNR + l] = scale_at(a, (n + l) * ng + f);
    }
  } else {
    const auto* q = static_cast<const uint8_t*>(a.qw) + n * a.K;
    const I c128 = VV::set1i(128);
    int64_t kp = 0;
    for (; kp + 8 <= p.nq && 2 * kp + 16 <= a.K; kp += 8) {  // 16 codes a row
      I u[4];
      VV::gather16(q + 2 * kp, a.K, u);
      for (int j = 0; j < 4; ++j) {
        I v = VV::flip_bytes(u[j]);  // code + 128 in each byte
        for (int h = 0; h < 2; ++h, v = VV::template srl<16>(v))
          store(dst + (kp + 2 * j + h) * kNR,
                pair(VV::sub32(VV::band(v, 255u), c128), VV::sub32(VV::band(VV::template srl<8>(v), 255u), c128)));
      }
    }
    for (; kp < p.nq; ++kp)  // the last codes, lane by lane (codes past K are 0)
      for (int l = 0; l < W; ++l) {
        const int64_t k = 2 * kp;
        const auto* r = reinterpret_cast<const int8_t*>(q + l * a.K);
        dst[kp * kNR + l] = bf16_pair(k < a.K ? r[k] : 0, k + 1 < a.K ? r[k + 1] : 0);
      }
    for (int l = 0; l < W; ++l) s[l] = scale_at(a, n + l);
  }
}

// The slab's W columns n0..n0+nc-1 (padded to whole panels) into Bq, with their scales into sw
// and (-a8) their corrections into corr: W columns at a time, then one by one.
template <bool Bf, class VV = V>
static void pack_b(const QmmArgs& a, const A8GemmPlan& p, int64_t n0, int nc, uint32_t* Bq,
                   float* sw, int32_t* corr) {
  const int npan = (nc + kNR - 1) / kNR;
  // column c's first lane, scale and correction
  auto dst = [&](int c) { return Bq + (c / kNR) * p.nq * kNR + c % kNR; };
  auto s = [&](int c) { return sw + (c / kNR) * p.nf * kNR + c % kNR; };
  auto cs = [&](int c) { return corr + (c / kNR) * p.nf * kNR + c % kNR; };
  int c = 0;
  for (; c + VV::W <= nc; c += VV::W) {
    if constexpr (Bf) bf16_pack_cols<VV>(a, p, n0 + c, dst(c), s(c));
    else a8_pack_cols<VV>(a, p, n0 + c, dst(c), s(c), cs(c));
  }
  for (; c < npan * kNR; ++c) {
    if constexpr (Bf) bf16_pack_col(a, p, c < nc ? n0 + c : -1, dst(c), s(c));
    else a8_pack_col(a, p, c < nc ? n0 + c : -1, dst(c), s(c), cs(c));
  }
}

// C[MR x nc] = the slab's share: A = kA8MR-interleaved x lanes (-a8: quads of q + 128; bf16: pairs
// of x), Bq one panel (nq lanes), qpf lanes per fold (the last fold may be shorter); sw the
// panel's per-fold column scales. -a8 only: corr its -128 sum w per fold, sxr[i] x row i's scales.
// The -a8 sums are s32 from -128 sum w, converted at each fold; the bf16 ones fp32 from zero.
template <int MR, bool Bf, class VV = V>
__attribute__((noinline)) static void dot_micro(const uint32_t* A, const uint32_t* Bq, int64_t nq, int64_t qpf,
                                                const float* sw, const int32_t* corr, const float* const* sxr,
                                                float* C, int64_t ldc, int nc) {
  using F = typename VV::F;
  using I = typename VV::I;
  using Acc = std::conditional_t<Bf, F, I>;
  constexpr int W = VV::W;
  F t0[MR], t1[MR];
  for (int i = 0; i < MR; ++i) t0[i] = t1[i] = VV::zero();
  for (int64_t f = 0, kq = 0; kq < nq; ++f) {
    Acc a0[MR], a1[MR];
    if constexpr (Bf) {
      for (int i = 0; i < MR; ++i) a0[i] = a1[i] = VV::zero();
    } else {
      const auto* cf = reinterpret_cast<const uint8_t*>(corr + f * kNR);
      const I c0 = VV::loadi(cf), c1 = VV::loadi(cf + 4 * W);
      for (int i = 0; i < MR; ++i) a0[i] = c0, a1[i] = c1;
    }
    for (const int64_t kend = std::min(kq + qpf, nq); kq < kend; ++kq) {  // INT8's last -a8 fold may be short
      const auto* b = reinterpret_cast<const uint8_t*>(Bq + kq * kNR);
      const I b0 = VV::loadi(b), b1 = VV::loadi(b + 4 * W);
      for (int i = 0; i < MR; ++i) {
        const I x = VV::set1i(static_cast<int32_t>(A[kq * kA8MR + i]));
        if constexpr (Bf) {
          a0[i] = VV::dot_bf16(a0[i], x, b0);
          a1[i] = VV::dot_bf16(a1[i], x, b1);
        } else {
          a0[i] = VV::dpbusd(a0[i], x, b0);
          a1[i] = VV::dpbusd(a1[i], x, b1);
        }
      }
    }
    const F s0 = VV::load(sw + f * kNR), s1 = VV::load(sw + f * kNR + W);
    for (int i = 0; i < MR; ++i) {
      if constexpr (Bf) {
        t0[i] = VV::fma(a0[i], s0, t0[i]);
        t1[i] = VV::fma(a1[i], s1, t1[i]);
      } else {
        const F sx = VV::set1(sxr[i][f]);
        t0[i] = VV::fma(VV::cvt(a0[i]), VV::fma(s0, sx, VV::zero()), t0[i]);
        t1[i] = VV::fma(VV::cvt(a1[i]), VV::fma(s1, sx, VV::zero()), t1[i]);
      }
    }
  }
  store_micro<MR>(t0, t1, C, ldc, nc, false);
}

// The GEMM: -a8 (Bf false) or bf16 x (Bf true). Tiles as the fp32 GEMM's (PrefillTiles), each
// packing its slab of W (all of K) once and running the micro-kernel over its rows.
template <bool Bf, class VV = V>
static void prefill_dot(const QmmArgs& a) {
  static thread_local A8GemmPlan scratch;  // reused between calls
  A8GemmPlan& p = scratch;
  if constexpr (Bf) bf16_gemm_plan(a, p);
  else a8_gemm_plan(a, p);
  const int64_t nq = p.nq, nfb = p.nf;  // a packed column: nq 4-byte lanes
  const int64_t NC = std::clamp<int64_t>((kA8SlabBytes / (4 * nq)) / kNR * kNR, kNR, kNC);
  const PrefillTiles pt(a, kA8MR, NC);
#pragma omp parallel num_threads(threads_for(a))
  {
    AlignedVec<uint32_t> Bq(nq * NC);
    AlignedVec<float> sw(nfb * NC), Cbuf(pt.direct ? 0 : pt.mblk * NC);
    AlignedVec<int32_t> corr(Bf ? 0 : nfb * NC);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < pt.ntiles(); ++t) {
      const PrefillTiles::Tile tl = pt.tile(a, t, Cbuf.data());
      pack_b<Bf, VV>(a, p, tl.n0, tl.nc, Bq.data(), sw.data(), corr.data());
      for (int i0 = 0; i0 < tl.mrows; i0 += kA8MR) {
        const int mr = std::min(kA8MR, tl.mrows - i0);
        const float* sxr[kA8MR] = {};
        if constexpr (!Bf)
          for (int i = 0; i < kA8MR; ++i) sxr[i] = p.sx.data() + (tl.mb0 + i0 + std::min(i, mr - 1)) * p.nf;
        const uint32_t* A = p.xq.data() + (tl.mb0 + i0) / kA8MR * nq * kA8MR;
        for (int j0 = 0; j0 < tl.nc; j0 += kNR) {
          const int64_t j = j0 / kNR;
          auto run = [&](auto MR) {
            constexpr int R = decltype(MR)::value;
            const uint32_t* B = Bq.data() + j * nq * kNR;
            const float* s = sw.data() + j * nfb * kNR;
            const int w = std::min(kNR, tl.nc - j0);
            dot_micro<R, Bf, VV>(A, B, nq, p.qpf, s, Bf ? nullptr : corr.data() + j * nfb * kNR, sxr,
                                 tl.C + i0 * tl.ldc + j0, tl.ldc, w);
          };
          switch (mr) {
            case 6: run(std::integral_constant<int, 6>{}); break;
            case 5: run(std::integral_constant<int, 5>{}); break;
            case 4: run(std::integral_constant<int, 4>{}); break;
            case 3: run(std::integral_constant<int, 3>{}); break;
            case 2: run(std::integral_constant<int, 2>{}); break;
            default: run(std::integral_constant<int, 1>{}); break;
          }
        }
      }
      pt.epilogue(a, tl.C, tl.ldc, t, Bf ? nullptr : p.bad.data());
    }
  }
}

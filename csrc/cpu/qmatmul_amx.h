// qmatmul prefill on AMX tiles (tdpbf16ps: 16 x 16 fp32 += 16 x 32 bf16 times 32 x 16 bf16; -a8:
// tdpbssd, below), where the traits have kAmx and the CPU has AMX-BF16 and AMX-INT8 (amx();
// PYQUANT_AMX=0 turns it off). Included by qmatmul_kernels.h inside the ISA namespace (it uses that
// file's helpers and V; the tile operations are V's: tile_config, tile_load<T>, tile_store<T>,
// tile_zero<T>, tile_dp<C, A, B>, tile_dp_i8<C, A, B>, tile_release).
//
// Exact operands, so the result is the fp32 GEMM's up to the order of fp32 additions:
//   W: code - z (INT4, |.| <= 15) or q (INT8, |q| <= 127): small integers, exact in bf16.
//   x: as terms that are exact in bf16 and sum to x: bf16 x itself; fp16 x two terms and fp32 x
//      three, each the truncation to bf16 of what the terms before it leave (8 significant bits
//      each: 8 + 8 + 8 = fp32's 24). A term below fp32's smallest normal reads as zero (AMX treats
//      denormal inputs as zero), an error under 2^-126 per element.
// Each product is exact in fp32 and the tile sums them in fp32, one group at a time; then
// y += P_g * s_g for every group (as the decode kernels and the fp32 GEMM apply scales). INT8 has
// one scale a column: its sums go on in fp32 through all of K and are scaled once.
//
// Layout: x is packed once per call, bf16 terms in blocks of 32 rows x 32 k (two A tiles, 64-byte
// rows), [row block][k step][term]. A task (one thread's) takes a panel of kAmxPanel columns of W
// and a share of x's row blocks and, a chunk of kAmxChunk k steps at a time (so that the chunk
// and a row block of x stay in L2), dequantizes the panel into B tiles ([32-column block][k step]
// [2 tiles][16 k pairs][16 columns][2]: a k pair of one column is one 32-bit lane) and runs its
// row blocks against it, adding into its share of y in fp32: per row block, one group at a time
// (INT8: kAmxKeepSteps steps) across the panel's 4 column blocks, so that the group's x tiles stay
// in L1 for the 4 blocks and the row block's y (16 KiB) stays there throughout (at M = 512,
// 4096 x 4096: -a8 INT4 G = 128 8.8 -> 7.2-7.9 ms, INT8 6.0 -> 5.4 ms; twenty-fifth session). One
// 32 x 32 block of y uses all 8 tiles: 4 C (fp32), 2 A (x), 2 B (W); a k step loads B once and A
// once per term; a last row block of 16 rows or fewer uses 2 C, 1 A.
//
// -a8 (x quantized to int8 per row and block as act8_row does it, qmatmul_a8.h) runs on AMX-INT8's
// tdpbssd (16 x 16 s32 += 16 x 64 s8 times 64 x 16 s8): W's codes as s8, code - z (INT4) or q
// (INT8), and x's int8 codes, one term. A k step is then 64 codes (4 to a 32-bit lane) where bf16
// has 32 (2), so a step is the same 2048 bytes of A tiles per 32 rows and of B tiles per 32
// columns, in the same layout. The s32 sums are exact; each INT4 group adds float(C) * (s_w * s_x)
// to y, as the VNNI GEMM does (qmatmul_dot_prefill.h), and INT8's s32 sums run through all of K
// (|sum| <= 127 * 127 * K < 2^31 for K < 133000), converted and scaled once. A group of 32 codes
// is half a step: the A tiles are configured 32 bytes wide and the B tiles 8 rows high, and each
// half of a step runs as a group of its own.
#pragma once

constexpr int64_t kAmxRows = 32;    // rows of x per block (2 A tiles)
constexpr int64_t kAmxCols = 32;    // columns of y per block (2 B tiles)
constexpr int64_t kAmxPanel = 128;  // columns of W one thread packs at a time
constexpr int64_t kAmxStepBytes = 2048;  // a block's k step: 2 tiles of 16 rows x 64 bytes
constexpr int64_t kAmxStep = kAmxStepBytes / 2;  // the same as bf16 values (32 k x 32 rows or columns)
// INT8: k steps between C's trips to acc (x's tiles stay in L1 meanwhile). At M = 512, 4096 x 4096
// -a8: 5.4 ms with 4, 5.5 with 8, 6.2 with 16, 6.4 with 2 (twenty-fifth session).
constexpr int64_t kAmxKeepSteps = 4;
constexpr int64_t kAmxChunk = 64;  // k steps (2048 k for bf16, 4096 for int8; whole groups) packed and run at a time

// ldtilecfg's 64 bytes, palette 1: 8 tiles of 16 rows x 64 bytes; half: the A tiles (4, 5) 32
// bytes wide and the B tiles (6, 7) 8 rows high (-a8 with groups of 32: half a k step).
struct alignas(64) AmxTileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
  explicit AmxTileConfig(bool half) {
    if (half) colsb[4] = colsb[5] = 32, rows[6] = rows[7] = 8;
  }
};

// bf16 terms of x: 1 (bf16), 2 (fp16: 11 significant bits) or 3 (fp32).
static inline int amx_terms(DType dt) { return dt == DType::BF16 ? 1 : dt == DType::F16 ? 2 : 3; }

// x [M, K] into X [Mp / 32][nks][terms][32 rows][32] bf16 (rows past M and k past K zero).
static inline void amx_pack_x(const QmmArgs& a, int64_t nks, int terms, uint16_t* X, int nthreads) {
  const int64_t nmb = (a.M + kAmxRows - 1) / kAmxRows, Kp = nks * 32;
#pragma omp parallel num_threads(nthreads)
  {
    AlignedVec<float> xr(Kp);
#pragma omp for schedule(static)
    for (int64_t mb = 0; mb < nmb; ++mb) {
      for (int64_t r = 0; r < kAmxRows; ++r) {
        const int64_t m = mb * kAmxRows + r;
        uint16_t* out = X + mb * nks * terms * kAmxStep + r * 32;
        if (m >= a.M) {
          for (int64_t ks = 0; ks < nks; ++ks)
            for (int t = 0; t < terms; ++t) std::memset(out + (ks * terms + t) * kAmxStep, 0, 64);
          continue;
        }
        const void* xm = row_ptr(a.x, a.xdt, m, a.ldx);
        if (a.xdt == DType::BF16) {  // the one term is x itself
          const auto* xb = static_cast<const uint16_t*>(xm);
          for (int64_t ks = 0; ks < nks; ++ks) {
            const int64_t k0 = ks * 32, n = std::min<int64_t>(32, a.K - k0);
            uint16_t* o = out + ks * kAmxStep;
            std::memcpy(o, xb + k0, n * 2);
            if (n < 32) std::memset(o + n, 0, (32 - n) * 2);
          }
          continue;
        }
        load_row(xm, a.xdt, a.K, xr.data());
        std::fill(xr.begin() + a.K, xr.end(), 0.f);
        for (int64_t ks = 0; ks < nks; ++ks) {
          float v[32];
          std::memcpy(v, xr.data() + ks * 32, sizeof v);
          for (int t = 0; t < terms; ++t) {
            uint16_t* o = out + (ks * terms + t) * kAmxStep;
            for (int i = 0; i < 32; ++i) {
              const uint32_t hi = f_bits(v[i]) & 0xFFFF0000u;
              o[i] = static_cast<uint16_t>(hi >> 16);
              const float rest = v[i] - bits_f(hi);  // exact: what the truncation dropped
              v[i] = rest == rest ? rest : 0.f;         // x inf (or NaN): carried by its first term
            }
          }
        }
      }
    }
  }
}

// -a8: x [M, K] quantized (act8_row, blocks of B codes) into X [Mp / 32][nks][32 rows][64] int8
// codes, its block scales into sx [M][nb] and bad[m] = 1 where row m holds a NaN or an Inf (rows
// past M and codes past K zero).
static inline void amx_pack_x_a8(const QmmArgs& a, int64_t nks, int64_t B, uint8_t* X, float* sx, uint8_t* bad,
                                 int nthreads) {
  const int64_t nmb = (a.M + kAmxRows - 1) / kAmxRows, nb = (a.K + B - 1) / B;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> xr(a.K);
    std::vector<int8_t> q(std::max(nks * 64, nb * B));
#pragma omp for schedule(static)
    for (int64_t mb = 0; mb < nmb; ++mb) {
      for (int64_t r = 0; r < kAmxRows; ++r) {
        const int64_t m = mb * kAmxRows + r;
        uint8_t* out = X + mb * nks * kAmxStepBytes + r * 64;
        std::fill(q.begin(), q.end(), 0);
        if (m < a.M) {
          load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, a.K, xr.data());
          bad[m] = !act8_row(xr.data(), a.K, B, q.data(), sx + m * nb);
        }
        for (int64_t ks = 0; ks < nks; ++ks) std::memcpy(out + ks * kAmxStepBytes, q.data() + ks * 64, 64);
      }
    }
  }
}

// One row of a B tile: lane l = the bf16 pair of column l, its low half from even (exact small
// integers as fp32, so their bf16 is their top 16 bits) and its high half from odd.
template <class VV>
static inline void amx_store_pair(uint16_t* row, typename VV::F even, typename VV::F odd) {
  const typename VV::I d = VV::bor(VV::template srl<16>(VV::asi(even)), VV::band(VV::asi(odd), 0xFFFF0000u));
  VV::storei(reinterpret_cast<uint8_t*>(row), d);
}

// 16 rows of bytes at p (stride apart) or, for the rows and bytes past the weight's end, a
// zero-padded copy of what exists (nr rows of nb bytes).
static inline const uint8_t* amx_rows(const uint8_t* p, int64_t stride, int nr, int nb, uint8_t (&tmp)[256],
                                      int64_t& out_stride) {
  if (nr == 16 && nb == 16) {
    out_stride = stride;
    return p;
  }
  std::memset(tmp, 0, sizeof tmp);
  for (int r = 0; r < nr; ++r)
    if (nb > 0) std::memcpy(tmp + 16 * r, p + r * stride, nb);
  out_stride = 16;
  return tmp;
}

// Columns n0 .. n0 + nr - 1 of an INT4 W (nr <= 16) as one B tile per k step: lane l of row kp is
// (code - z) of column n0 + l at k = 2 kp (low half) and 2 kp + 1 (high half). Bytes hold codes
// low nibble first, so byte kp of a step is exactly row kp's pair. Each half becomes bf16 by a
// table lookup (vpermw): its index is code + 15 - z, in [0, 30], and table[i] = bf16(i - 15).
template <class VV>
static void amx_pack_int4(const QmmArgs& a, int64_t n0, int nr, int64_t ks0, int64_t ks1, int64_t ng, uint16_t* dst,
                          int64_t dst_step) {
  using I = typename VV::I;
  const int64_t rb = ng * a.group / 2;
  const uint8_t* q = static_cast<const uint8_t*>(a.qw) + n0 * rb;
  const int64_t steps_per_group = a.group / 32;
  alignas(64) uint16_t lut[32];
  for (int i = 0; i < 32; ++i) lut[i] = f32_to_bf16(static_cast<float>(i - 15));
  const I table = VV::loadi(reinterpret_cast<const uint8_t*>(lut));
  alignas(64) int32_t off[16];  // -(15 - z) in both halves of column l's lane (z = 0 past N, whose codes are 0)
  I offv = VV::zero_i();
  uint8_t tmp[256];
  for (int64_t ks = ks0; ks < ks1; ++ks) {
    if (ks == ks0 || ks % steps_per_group == 0) {
      const int64_t g = ks / steps_per_group;
      for (int l = 0; l < 16; ++l)
        off[l] = -(15 - (l >= nr ? 0 : zero_point(a, n0 + l, ng, g))) * 0x10001;
      offv = VV::loadi(reinterpret_cast<const uint8_t*>(off));
    }
    int64_t stride;
    const uint8_t* p = amx_rows(q + ks * 16, rb, nr, 16, tmp, stride);
    I v[4];
    VV::gather16(p, stride, v);
    uint16_t* o = dst + (ks - ks0) * dst_step;
    for (int j = 0; j < 4; ++j) {
      I w = v[j];
      for (int b = 0; b < 4; ++b, w = VV::template srl<8>(w)) {  // byte b: low nibble to bits 0-3, high to 16-19
        const I t = VV::bor(VV::band(w, 0xFu), VV::band(VV::template sll<12>(w), 0xF0000u));
        VV::storei(reinterpret_cast<uint8_t*>(o + (4 * j + b) * 32), VV::permw(VV::sub32(t, offv), table));
      }
    }
  }
}

// The same for INT8 (rows of K bytes; k past K reads as 0).
template <class VV>
static void amx_pack_int8(const QmmArgs& a, int64_t n0, int nr, int64_t ks0, int64_t ks1, uint16_t* dst,
                          int64_t dst_step) {
  using I = typename VV::I;
  const uint8_t* q = static_cast<const uint8_t*>(a.qw) + n0 * a.K;
  const I off = VV::set1i(128);
  uint8_t tmp[256];
  for (int64_t ks = ks0; ks < ks1; ++ks) {
    uint16_t* o = dst + (ks - ks0) * dst_step;
    for (int h = 0; h < 2; ++h) {
      const int64_t k0 = ks * 32 + h * 16;
      const int nb = static_cast<int>(std::clamp<int64_t>(a.K - k0, 0, 16));
      int64_t stride;
      const uint8_t* p = amx_rows(q + k0, a.K, nr, nb, tmp, stride);
      I v[4];
      VV::gather16(p, stride, v);
      for (int j = 0; j < 4; ++j) {
        I w = VV::flip_bytes(v[j]);  // bytes q + 128
        for (int b = 0; b < 2; ++b, w = VV::template srl<16>(w)) {
          amx_store_pair<VV>(o + (8 * h + 2 * j + b) * 32, VV::cvt(VV::sub32(VV::band(w, 0xFFu), off)),
                             VV::cvt(VV::sub32(VV::band(VV::template srl<8>(w), 0xFFu), off)));
        }
      }
    }
  }
}

// -a8: columns n0 .. n0 + nr - 1 of W (nr <= 16) as one s8 B tile per k step of 64 codes: lane l
// of row kq is codes 4 kq .. 4 kq + 3 of column n0 + l, code - z (INT4) or q (INT8); 16 bytes of
// each column at a time (32 INT4 codes, within one group; 16 INT8 codes). Bytes past a row's end
// read as 0 (they meet x's zero codes past K).
template <class VV>
static void amx_pack_a8(const QmmArgs& a, int64_t n0, int nr, int64_t ks0, int64_t ks1, int64_t ng, uint8_t* dst,
                        int64_t dst_step) {
  using I = typename VV::I;
  const bool int4 = a.bits == 4;
  const int64_t rb = int4 ? ng * a.group / 2 : a.K, step_bytes = int4 ? 32 : 64;
  const uint8_t* q = static_cast<const uint8_t*>(a.qw) + n0 * rb;
  alignas(64) int32_t zt[16];
  I zb = VV::zero_i();
  int64_t zg = -1;  // the group whose zero-points zb holds
  uint8_t tmp[256];
  for (int64_t ks = ks0; ks < ks1; ++ks) {
    uint8_t* o = dst + (ks - ks0) * dst_step;
    for (int64_t h = 0; h < step_bytes / 16; ++h) {
      const int64_t b0 = ks * step_bytes + 16 * h;
      int64_t stride;
      const uint8_t* p = amx_rows(q + b0, rb, nr, static_cast<int>(std::clamp<int64_t>(rb - b0, 0, 16)), tmp, stride);
      I v[4];
      VV::gather16(p, stride, v);
      if (!int4) {
        for (int j = 0; j < 4; ++j) VV::storei(o + (4 * h + j) * 64, v[j]);
        continue;
      }
      const int64_t g = std::min(2 * b0 / a.group, ng - 1);  // past the row's end: any group (x is 0 there)
      if (g != zg) {
        for (int l = 0; l < 16; ++l) zt[l] = (l >= nr ? 0 : zero_point(a, n0 + l, ng, g)) * 0x01010101;
        zb = VV::loadi(reinterpret_cast<const uint8_t*>(zt));
        zg = g;
      }
      for (int j = 0; j < 4; ++j) {  // lane: codes 8j .. 8j + 7 of the 32, two quads
        VV::storei(o + (8 * h + 2 * j) * 64, codes_minus_zero<VV>(nibble_bytes<VV>(VV::band(v[j], 0xFFFFu)), zb));
        VV::storei(o + (8 * h + 2 * j + 1) * 64, codes_minus_zero<VV>(nibble_bytes<VV>(VV::template srl<16>(v[j])), zb));
      }
    }
  }
}

// A block's k-step geometry and scale layout.
struct AmxGeom {
  int terms;                // x's terms a k step (bf16: 1 to 3; -a8: 1)
  int64_t steps_per_group;  // k steps a scale group spans (INT8: kAmxKeepSteps, see Keep)
  int64_t st_stride;        // between groups in the panel's column scales
  const float* sx;          // -a8: x's block scales, row m's for group g at m * sx_ld + g * sx_gstride
  int64_t sx_ld, sx_gstride;
};

template <class VV, bool A8, int C, int A, int B>
static inline void amx_dp() {
  if constexpr (A8) VV::template tile_dp_i8<C, A, B>();
  else VV::template tile_dp<C, A, B>();
}

// One group of one 32 x 32 block of y: units u0 .. u1 - 1 (k steps; Half: half steps) of scale group
// grp, xb the row block of x, wb the column block's B tiles from step ks0. C tiles 0-3 (rows 0-15
// / 16-31 of x times columns 0-15 / 16-31) sum the group, then acc += C * s (bf16: the group's
// scales of the 32 columns, st; -a8: those times each row's s_x, and C is s32). Keep (INT8): C
// starts from acc and goes back there unscaled (fp32, or -a8 s32); the scales come at the end.
// Rows of acc are acc_ld apart. RT = 1: the block's first 16 rows only (tiles 0, 1; the rest of
// x's block is padding).
template <class VV, int RT, bool A8, bool Half, bool Keep>
static inline void amx_group(const uint8_t* xb, const uint8_t* wb, int64_t ks0, int64_t u0, int64_t u1, int64_t grp,
                             const AmxGeom& g, const float* st, int64_t m0, float* acc, int64_t acc_ld,
                             float (&cbuf)[4][16][16]) {
  using F = typename VV::F;
  if constexpr (Keep) {  // INT8: C goes on from acc (fp32, or -a8 s32), scaled once at the end
    VV::template tile_load<0>(acc, acc_ld * 4);
    VV::template tile_load<1>(acc + 16, acc_ld * 4);
    if constexpr (RT == 2) {
      VV::template tile_load<2>(acc + 16 * acc_ld, acc_ld * 4);
      VV::template tile_load<3>(acc + 16 * acc_ld + 16, acc_ld * 4);
    }
  } else {
    VV::template tile_zero<0>();
    VV::template tile_zero<1>();
    if constexpr (RT == 2) {
      VV::template tile_zero<2>();
      VV::template tile_zero<3>();
    }
  }
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t ks = Half ? u / 2 : u, h = Half ? u % 2 : 0;  // Half: k quads 8h.., bytes 32h.. of a row
    const uint8_t* b = wb + (ks - ks0) * kAmxStepBytes + h * 512;
    VV::template tile_load<6>(b, 64);
    VV::template tile_load<7>(b + 1024, 64);
    const uint8_t* x = xb + ks * g.terms * kAmxStepBytes + h * 32;
    for (int t = 0; t < g.terms; ++t, x += kAmxStepBytes) {
      VV::template tile_load<4>(x, 64);
      amx_dp<VV, A8, 0, 4, 6>();
      amx_dp<VV, A8, 1, 4, 7>();
      if constexpr (RT == 2) {
        VV::template tile_load<5>(x + 1024, 64);
        amx_dp<VV, A8, 2, 5, 6>();
        amx_dp<VV, A8, 3, 5, 7>();
      }
    }
  }
  if constexpr (Keep) {
    VV::template tile_store<0>(acc, acc_ld * 4);
    VV::template tile_store<1>(acc + 16, acc_ld * 4);
    if constexpr (RT == 2) {
      VV::template tile_store<2>(acc + 16 * acc_ld, acc_ld * 4);
      VV::template tile_store<3>(acc + 16 * acc_ld + 16, acc_ld * 4);
    }
    return;
  }
  VV::template tile_store<0>(&cbuf[0][0][0], 64);
  VV::template tile_store<1>(&cbuf[1][0][0], 64);
  if constexpr (RT == 2) {
    VV::template tile_store<2>(&cbuf[2][0][0], 64);
    VV::template tile_store<3>(&cbuf[3][0][0], 64);
  }
  const float* s = st + grp * g.st_stride;
  const F s0 = VV::load(s), s1 = VV::load(s + 16);
  for (int i = 0; i < RT; ++i)
    for (int r = 0; r < 16; ++r) {
      float* row = acc + (16 * i + r) * acc_ld;
      if constexpr (A8) {
        const F sx = VV::set1(g.sx[(m0 + 16 * i + r) * g.sx_ld + grp * g.sx_gstride]);
        const F c0 = VV::cvt(VV::loadi(reinterpret_cast<const uint8_t*>(cbuf[2 * i][r])));
        const F c1 = VV::cvt(VV::loadi(reinterpret_cast<const uint8_t*>(cbuf[2 * i + 1][r])));
        VV::store(row, VV::fma(c0, VV::fma(s0, sx, VV::zero()), VV::load(row)));
        VV::store(row + 16, VV::fma(c1, VV::fma(s1, sx, VV::zero()), VV::load(row + 16)));
      } else {
        VV::store(row, VV::fma(VV::load(cbuf[2 * i][r]), s0, VV::load(row)));
        VV::store(row + 16, VV::fma(VV::load(cbuf[2 * i + 1][r]), s1, VV::load(row + 16)));
      }
    }
}

// The GEMM: weight-only (A8 false) on tdpbf16ps, or -a8 on tdpbssd.
template <class VV, bool A8>
static void amx_prefill(const QmmArgs& a) {
  static_assert(VV::W == 16, "AMX tiles have 16 fp32 columns");
  const int nthreads = threads_for(a);
  const bool int4 = a.bits == 4;
  const int64_t kstep = A8 ? 64 : 32;  // codes a k step
  const int64_t nks = (a.K + kstep - 1) / kstep;
  const int64_t ng = int4 ? (a.K + a.group - 1) / a.group : 1;
  const bool half = A8 && int4 && a.group < kstep;  // groups of 32: half a k step
  // A block's scale steps: INT4 a group's k steps, its scales st_stride apart; INT8 one scale per
  // column, applied once at the end (its "groups" are only how often C visits acc). -a8: x's
  // block scales likewise (INT4: one a group; INT8: one a row).
  AmxGeom geo{};
  geo.terms = A8 ? 1 : amx_terms(a.xdt);
  geo.steps_per_group = int4 ? std::max<int64_t>(a.group / kstep, 1) : kAmxKeepSteps;
  geo.st_stride = int4 ? kAmxPanel : 0;
  geo.sx_ld = ng;
  geo.sx_gstride = int4 ? 1 : 0;
  const int64_t nmb = (a.M + kAmxRows - 1) / kAmxRows;
  const int64_t npanels = (a.N + kAmxPanel - 1) / kAmxPanel;
  // Tasks: a panel and a share of x's row blocks. With few panels each is split by rows (each
  // share packs the panel again) so that every thread gets work: at least 4 tasks a thread.
  const int64_t msplit = std::clamp<int64_t>((4 * int64_t{nthreads} + npanels - 1) / npanels, 1, nmb);
  const int64_t ntasks = npanels * msplit;
  AlignedVec<uint8_t> X(nmb * nks * geo.terms * kAmxStepBytes);
  std::vector<float> sx(A8 ? nmb * kAmxRows * ng : 0, 0.f);
  std::vector<uint8_t> bad(A8 ? a.M : 0, 0);
  if constexpr (A8) amx_pack_x_a8(a, nks, int4 ? a.group : a.K, X.data(), sx.data(), bad.data(), nthreads);
  else amx_pack_x(a, nks, geo.terms, reinterpret_cast<uint16_t*>(X.data()), nthreads);
  geo.sx = sx.data();
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(nthreads, ntasks)))
  {
    const AmxTileConfig cfg(half);
    VV::tile_config(&cfg);
    constexpr int64_t nblocks = kAmxPanel / kAmxCols;
    const int64_t chunk = std::min(kAmxChunk, nks);
    AlignedVec<uint8_t> Wp(nblocks * chunk * kAmxStepBytes);
    AlignedVec<float> st(ng * kAmxPanel), srow(ng), bias(kAmxPanel, 0.f);
    AlignedVec<float> acc((nmb + msplit - 1) / msplit * kAmxRows * kAmxPanel);  // the task's y in fp32
    alignas(64) float cbuf[4][16][16];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t p = task / msplit, share = task % msplit;
      const int64_t mb0 = share * nmb / msplit, mb1 = (share + 1) * nmb / msplit;  // row blocks mb0 .. mb1 - 1
      const int64_t n0 = p * kAmxPanel, np = std::min(kAmxPanel, a.N - n0);
      std::fill(st.begin(), st.end(), 0.f);
      for (int64_t j = 0; j < np; ++j) {
        row_scales(a, n0 + j, ng, srow.data());
        for (int64_t g = 0; g < ng; ++g) st[g * kAmxPanel + j] = srow[g];
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t ks0 = 0; ks0 < nks; ks0 += chunk) {  // chunks of k steps: W's and x's share stays in L2
        const int64_t ks1 = std::min(ks0 + chunk, nks);
        for (int64_t t = 0; t < 2 * nblocks; ++t) {  // 16-column tiles: block t / 2, tile t % 2
          const int64_t nt = n0 + 16 * t;
          const int nr = static_cast<int>(std::clamp<int64_t>(a.N - nt, 0, 16));
          uint8_t* dst = Wp.data() + (t / 2) * chunk * kAmxStepBytes + (t % 2) * (kAmxStepBytes / 2);
          if (nr == 0) {
            for (int64_t ks = ks0; ks < ks1; ++ks) std::memset(dst + (ks - ks0) * kAmxStepBytes, 0, kAmxStepBytes / 2);
          } else if constexpr (A8) {
            amx_pack_a8<VV>(a, nt, nr, ks0, ks1, ng, dst, kAmxStepBytes);
          } else if (int4) {
            amx_pack_int4<VV>(a, nt, nr, ks0, ks1, ng, reinterpret_cast<uint16_t*>(dst), kAmxStep);
          } else {
            amx_pack_int8<VV>(a, nt, nr, ks0, ks1, reinterpret_cast<uint16_t*>(dst), kAmxStep);
          }
        }
        // Per row block, a group at a time across the panel's column blocks: the group's x tiles
        // stay in L1 for the 4 blocks, and the row block's y (16 KiB) there throughout.
        for (int64_t mb = mb0; mb < mb1; ++mb) {
          const uint8_t* xb = X.data() + mb * nks * geo.terms * kAmxStepBytes;
          float* am = acc.data() + (mb - mb0) * kAmxRows * kAmxPanel;
          auto run = [&](auto RT, auto Half, auto Keep) {
            constexpr int rt = decltype(RT)::value;
            constexpr bool hf = decltype(Half)::value;
            const int64_t upg = hf ? 1 : geo.steps_per_group;  // units (k steps; Half: half steps) a group
            const int64_t u0 = hf ? 2 * ks0 : ks0, u1 = hf ? 2 * ks1 : ks1;
            for (int64_t gu = u0; gu < u1; gu += upg) {
              const int64_t grp = gu / upg, ge = std::min(gu + upg, u1);
              if (hf && grp >= ng) break;  // the second half of the last step, past W's groups
              for (int64_t b = 0; b * kAmxCols < np; ++b)
                amx_group<VV, rt, A8, hf, decltype(Keep)::value>(
                    xb, Wp.data() + b * chunk * kAmxStepBytes, ks0, gu, ge, grp, geo, st.data() + b * kAmxCols,
                    mb * kAmxRows, am + b * kAmxCols, kAmxPanel, cbuf);
            }
          };
          auto run_rows = [&](auto Half, auto Keep) {
            if (a.M - mb * kAmxRows > 16) run(std::integral_constant<int, 2>{}, Half, Keep);
            else run(std::integral_constant<int, 1>{}, Half, Keep);
          };
          if (!int4) run_rows(std::false_type{}, std::true_type{});
          else if (half) run_rows(std::bool_constant<A8>{}, std::false_type{});  // half implies A8
          else run_rows(std::false_type{}, std::false_type{});
        }
      }
      if (!int4) {  // INT8: acc holds the whole sums (-a8: s32); y = acc * s_w (* s_x)
        for (int64_t m = mb0 * kAmxRows; m < std::min(mb1 * kAmxRows, a.M); ++m)
          for (int64_t j = 0; j < kAmxPanel; j += 16) {
            float* row = acc.data() + (m - mb0 * kAmxRows) * kAmxPanel + j;
            const auto s = VV::load(st.data() + j);
            if constexpr (A8)
              VV::store(row, VV::fma(VV::cvt(VV::loadi(reinterpret_cast<const uint8_t*>(row))),
                                     VV::fma(s, VV::set1(sx[m]), VV::zero()), VV::zero()));
            else
              VV::store(row, VV::fma(VV::load(row), s, VV::zero()));
          }
      }
      if (a.bias)
        for (int64_t j = 0; j < np; ++j) bias[j] = load_one(a.bias, a.ydt, n0 + j);
      for (int64_t m = mb0 * kAmxRows; m < std::min(mb1 * kAmxRows, a.M); ++m) {
        float* row = acc.data() + (m - mb0 * kAmxRows) * kAmxPanel;
        if (A8 && bad[m]) std::fill(row, row + np, NAN);
        else if (a.bias)
          for (int64_t j = 0; j < np; ++j) row[j] += bias[j];
        store_row(row, a.ydt, np, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n0 * dsize(a.ydt));
      }
    }
    VV::tile_release();
  }
}

// qmatmul with int8 activations (specs ending in -a8; see pyquant/formats.py), included by
// qmatmul_kernels.h inside the ISA namespace (it uses that file's helpers and V; that file
// includes <immintrin.h> when __AVX2__ is defined).
//
// x is quantized per row and per block of B columns (B = the weight's group size for INT4, K for
// INT8) exactly as pyquant.ops.reference.quantize_activations does it:
//   s = max|x_b| / 127,  q = clamp(rint(x / s), -127, 127) (0 when s is not > 0),  x ~= q * s.
// A row holding a NaN or an Inf gives NaN outputs (the reference's q * s is NaN there).
//
// INT4 decode (M <= 8) multiplies codes and q as integers (llama.cpp's Q4 x Q8 dot product):
//   y[n] = sum_g sw[n,g] * s[g] * sum_{k in g} code_k q_k  -  sum_g sw[n,g] z[n,g] * (s[g] * sum_{k in g} q_k).
// AVX2: a 32-byte block holds 64 codes; one AND gives the 32 low nibbles, a shift and an AND the
// high ones, each met by 32 bytes of q permuted to match (qa[i] = q[64b + 2i], qb[i] = q[64b + 2i + 1]);
// vpmaddubsw (u8 code x s8 q, pairs summed to s16) then sums in s16 over at most 256 codes
// (8 x 2 x 15 x 127 < 2^15: no saturation), vpmaddwd by 1 to s32, one conversion and one FMA per
// group. Integer sums are exact, so the only roundings are the scale products and the fp32 sums.
// L1-resident, one core: 2.4-2.6x the weight-only loop's code-MACs per second; from memory at
// 4096 x 4096, M = 1, 1.08-1.21x the weight-only kernel (the tile's access pattern then sets the
// pace), M = 4 1.3-1.5x; from L3 1.6x (bench/RESULTS.md, twelfth session).
// The 256-bit code serves the AVX-512 build too (it is compiled with -mavx2); without AVX2 a
// scalar loop over the same layout. Everything else (INT8 weights, M > 8) quantizes x into an
// fp32 copy q * s and runs the weight-only kernels on it.
#pragma once

// Row x[0..K) (fp32) into q[0..) (zero from K to the end of the last block) and s[0..nb):
// blocks of B. False when the row holds a NaN or an Inf (its outputs are NaN then). max |x| is
// taken over bit patterns (ordered as the values are; NaN's above Inf's); x / s is a division, as
// the reference does it (not a reciprocal), rounded half to even: the AVX2 lanes and the scalar
// tail give the same codes.
static inline bool act8_row(const float* x, int64_t K, int64_t B, int8_t* q, float* s) {
  uint32_t row_max = 0;
  const int64_t nb = (K + B - 1) / B;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * B, k1 = std::min(K, k0 + B);
    uint32_t amax = 0;
    int64_t k = k0;
#if defined(__AVX2__)
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256i vm = _mm256_setzero_si256();
    for (; k + 8 <= k1; k += 8)
      vm = _mm256_max_epu32(vm, _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)), abs_mask));
    alignas(32) uint32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), vm);
    for (uint32_t v : t) amax = std::max(amax, v);
#endif
    for (; k < k1; ++k) amax = std::max(amax, f_bits(x[k]) & 0x7fffffffu);
    row_max = std::max(row_max, amax);
    const float sb = bits_f(amax) / 127.f;
    s[b] = sb;
    k = k0;
    if (amax >= 0x7f800000u || !(sb > 0.f)) {  // not finite (the row's outputs are NaN), or all zero
      for (; k < k1; ++k) q[k] = 0;
      continue;
    }
#if defined(__AVX2__)
    const __m256 vs = _mm256_set1_ps(sb), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
    for (; k + 8 <= k1; k += 8) {
      __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256i i = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
      const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w16, w16));
    }
#endif
    for (; k < k1; ++k) q[k] = static_cast<int8_t>(std::clamp(std::nearbyint(x[k] / sb), -127.f, 127.f));
  }
  for (int64_t k = K; k < nb * B; ++k) q[k] = 0;
  return row_max < 0x7f800000u;
}

struct A8Plan {
  int64_t G, ng, ngp, Kp, Kq;         // Kp = ng * G; Kq: Kp rounded up to 64 (q's padded length)
  AlignedVec<int8_t> qp;              // [M][Kq]: q permuted per 64-code block (qp_index)
  std::vector<float> sx, qsum;        // [M][ngp]: block scales, and s * sum q (zero-padded)
  std::vector<uint8_t> finite;        // [M]
};

// Where q[k] sits in the tile's order: per 64 codes, the 32 even ones, then the 32 odd ones (they
// meet the low and the high nibbles of 32 bytes of codes).
static inline int64_t qp_index(int64_t k) { return (k & ~int64_t{63}) + ((k & 1) ? 32 : 0) + ((k & 63) >> 1); }

// q[0..Kq) (Kq a multiple of 64) into the tile's order (qp_index).
static inline void permute_q(const int8_t* q, int64_t Kq, int8_t* dst) {
  int64_t k = 0;
#if defined(__AVX2__)
  // in each 128-bit lane: even bytes to the low 8, odd to the high 8; then gather the quads
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (; k < Kq; k += 64) {
    const __m256i a = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k)), split), 0xD8);
    const __m256i b = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k + 32)), split), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k + 32), _mm256_permute2x128_si256(a, b, 0x31));
  }
#endif
  for (; k < Kq; ++k) dst[qp_index(k)] = q[k];
}

// A tile of R weight rows (bytes q + r * row_bytes, fp32 scales sw[r]) and MC rows of x (int8
// codes xq[m] permuted as above, block scales sx[m]): out[r][m] = sum_g sw * sx * (codes . q).
// Each row's nibbles are isolated once per block and serve the MC rows of x.
template <int MC, int R>
__attribute__((noinline)) static void a8_tile(const int8_t* const* xq, const float* const* sx, const uint8_t* q,
                                              int64_t row_bytes, const float* const* sw, const A8Plan& p,
                                              float out[R][MC]) {
  const int64_t G = p.G, ng = p.ng;
#if defined(__AVX2__)
  const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  __m256 tot[R][MC];
  for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) tot[r][m] = _mm256_setzero_ps();
  // 64 codes (32 when half: 16 bytes) of row r in block b, times x row m's: pairs summed to s16
  auto dot = [&](int r, int64_t b, bool half, __m256i (&d)[MC]) {
    const uint8_t* src = q + r * row_bytes + b * 32;
    const __m256i v = half ? _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)))
                           : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
    const __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    for (int m = 0; m < MC; ++m) {
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[m] + b * 64));
      const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[m] + b * 64 + 32));
      d[m] = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xa), _mm256_maddubs_epi16(hi, xb));
    }
  };
  if (G >= 64) {  // a group is G / 64 whole blocks
    const int64_t bpg = G / 64;
    for (int64_t g = 0; g < ng; ++g) {
      __m256i s16[R][MC];
      for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) s16[r][m] = _mm256_setzero_si256();
      for (int64_t b = g * bpg; b < (g + 1) * bpg; ++b) {
        prefetch_tile_ahead(q + b * R * 32, R * 32);
        for (int r = 0; r < R; ++r) {
          __m256i d[MC];
          dot(r, b, false, d);
          for (int m = 0; m < MC; ++m) s16[r][m] = _mm256_add_epi16(s16[r][m], d[m]);
        }
      }
      for (int r = 0; r < R; ++r)
        for (int m = 0; m < MC; ++m)
          tot[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(s16[r][m], ones)),
                                      _mm256_set1_ps(sw[r][g] * sx[m][g]), tot[r][m]);
    }
  } else {  // G = 32: bytes 0-15 of a block are group 2b, bytes 16-31 group 2b + 1 (lanes 0-3 / 4-7 after madd)
    const int64_t nb = (ng + 1) / 2;
    for (int64_t b = 0; b < nb; ++b) {
      const bool half = 2 * b + 1 >= ng;  // the last block of an odd group count: 16 bytes
      prefetch_tile_ahead(q + b * R * 32, R * 32);
      for (int r = 0; r < R; ++r) {
        __m256i d[MC];
        dot(r, b, half, d);
        for (int m = 0; m < MC; ++m) {
          const __m256 sc = _mm256_set_m128(_mm_set1_ps(half ? 0.f : sw[r][2 * b + 1] * sx[m][2 * b + 1]),
                                            _mm_set1_ps(sw[r][2 * b] * sx[m][2 * b]));
          tot[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(d[m], ones)), sc, tot[r][m]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) {
      const __m128 h = _mm_add_ps(_mm256_castps256_ps128(tot[r][m]), _mm256_extractf128_ps(tot[r][m], 1));
      const __m128 h2 = _mm_add_ps(h, _mm_movehl_ps(h, h));
      out[r][m] = _mm_cvtss_f32(_mm_add_ss(h2, _mm_shuffle_ps(h2, h2, 1)));
    }
#else
  for (int r = 0; r < R; ++r) {
    const uint8_t* qr = q + r * row_bytes;
    for (int m = 0; m < MC; ++m) {
      float t = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t acc = 0;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) {  // code k: byte k / 2, nibble k & 1
          const int code = (qr[k >> 1] >> ((k & 1) * 4)) & 15;
          acc += code * xq[m][qp_index(k)];
        }
        t += static_cast<float>(acc) * (sw[r][g] * sx[m][g]);
      }
      out[r][m] = t;
    }
  }
#endif
}

static void decode_int4_a8(const QmmArgs& a) {
  static thread_local A8Plan scratch;  // reused between calls; through a reference (see decode_int4)
  static thread_local std::vector<float> xr;
  static thread_local std::vector<int8_t> qn;
  A8Plan& p = scratch;
  constexpr int W = V::W;
  p.G = a.group;
  p.ng = (a.K + p.G - 1) / p.G;
  p.ngp = (p.ng + W - 1) / W * W;
  p.Kp = p.ng * p.G;
  p.Kq = (p.Kp + 63) / 64 * 64;
  const int64_t M = a.M;
  p.qp.assign(M * p.Kq, 0);
  p.sx.assign(M * p.ngp, 0.f);
  p.qsum.assign(M * p.ngp, 0.f);
  p.finite.assign(M, 1);
  xr.resize(a.K);
  qn.assign(p.Kq, 0);
  for (int64_t m = 0; m < M; ++m) {
    load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, a.K, xr.data());
    float* s = p.sx.data() + m * p.ngp;
    p.finite[m] = act8_row(xr.data(), a.K, p.G, qn.data(), s);
    permute_q(qn.data(), p.Kq, p.qp.data() + m * p.Kq);
    for (int64_t g = 0; g < p.ng; ++g) {
      int32_t t = 0;
      for (int64_t k = g * p.G; k < (g + 1) * p.G; ++k) t += qn[k];
      p.qsum[m * p.ngp + g] = s[g] * static_cast<float>(t);
    }
  }
  const int64_t N = a.N, nblk = (N + 3) / 4, row_bytes = p.Kp / 2;
  const int nt = threads_for(a);
  const int64_t chunk = tile_chunk(nblk, nt);
#pragma omp parallel num_threads(nt)
  {
    static thread_local std::vector<float> sbuf;  // this thread's own
    sbuf.assign(8 * p.ngp, 0.f);  // 4 rows' scales, then their s * z; zero padding to ngp
#pragma omp for schedule(dynamic, chunk)
    for (int64_t bi = 0; bi < nblk; ++bi) {
      const int64_t n0 = bi * 4, nr = std::min<int64_t>(4, N - n0);
      const float* sw[4];
      for (int64_t r = 0; r < nr; ++r) {
        row_scales_zeros(a, n0 + r, p.ng, sbuf.data() + r * p.ngp, sbuf.data() + (4 + r) * p.ngp);
        sw[r] = sbuf.data() + r * p.ngp;
      }
      const auto* q = static_cast<const uint8_t*>(a.qw) + n0 * row_bytes;
      float yt[4][8];  // [r][m]
      // Tiles of 4 weight rows x 2 rows of x; more rows of x run as more passes, which read the
      // tile's codes from L1. 2 x 4 against 1 x 4 (the first version): 1.09-1.17x at M = 2..8; 2 x 2,
      // 4 x 2, 4 x 4, 3 x 4 were no faster (bench/decode_ab.sh ACT=8 ACT_BASE=8, Zen 3).
      constexpr int MCmax = 2, Rt = 4;
      for (int64_t m0 = 0; m0 < M;) {
        const int8_t* xq[MCmax];
        const float* sx[MCmax];
        for (int m = 0; m < MCmax; ++m) {
          xq[m] = p.qp.data() + std::min<int64_t>(m0 + m, M - 1) * p.Kq;
          sx[m] = p.sx.data() + std::min<int64_t>(m0 + m, M - 1) * p.ngp;
        }
        auto run = [&](auto MC) {
          constexpr int mc = decltype(MC)::value;
          float o[4][mc];
          int64_t r = 0;
          for (; r + Rt <= nr; r += Rt) a8_tile<mc, Rt>(xq, sx, q + r * row_bytes, row_bytes, sw + r, p, o + r);
          for (; r < nr; ++r) a8_tile<mc, 1>(xq, sx, q + r * row_bytes, row_bytes, sw + r, p, o + r);
          for (int64_t rr = 0; rr < nr; ++rr) for (int m = 0; m < mc; ++m) yt[rr][m0 + m] = o[rr][m];
          m0 += mc;
        };
        if (M - m0 >= 2) run(std::integral_constant<int, MCmax>{});
        else run(std::integral_constant<int, 1>{});
      }
      for (int64_t m = 0; m < M; ++m) {
        float vals[4];
        for (int64_t r = 0; r < nr; ++r) {
          const float v = yt[r][m] - zero_term(sbuf.data() + (4 + r) * p.ngp, p.qsum.data() + m * p.ngp, p.ngp);
          vals[r] = p.finite[m] ? v + (a.bias ? load_one(a.bias, a.ydt, n0 + r) : 0.f) : NAN;
        }
        store_row(vals, a.ydt, nr, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n0 * dsize(a.ydt));
      }
    }
  }
}

// Every other -a8 case: x as q * s in the fp32 copy xh (NaN rows where x is not finite); returns
// the arguments that run the weight-only kernels on it.
static QmmArgs act8_fp32_copy(const QmmArgs& a, std::vector<float>& xh) {
  const int64_t K = a.K, B = a.bits == 4 ? a.group : K, nb = (K + B - 1) / B;
  xh.resize(a.M * K);
  const int nt = threads_for(a);
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> xr(K), s(nb);
    std::vector<int8_t> q(nb * B);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.M; ++m) {
      load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, K, xr.data());
      const bool fin = act8_row(xr.data(), K, B, q.data(), s.data());
      float* dst = xh.data() + m * K;
      for (int64_t k = 0; k < K; ++k) dst[k] = fin ? static_cast<float>(q[k]) * s[k / B] : NAN;
    }
  }
  QmmArgs b = a;
  b.x = xh.data();
  b.xdt = DType::F32;
  b.ldx = K;
  b.act_bits = 0;
  return b;
}

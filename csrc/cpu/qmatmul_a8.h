// qmatmul with int8 activations (specs ending in -a8; see pyquant/formats.py), included by
// qmatmul_kernels.h inside the ISA namespace (it uses that file's helpers and V; that file
// includes <immintrin.h> when __AVX2__ is defined).
//
// x is quantized per row and per block of B columns (B = the weight's group size for INT4, K for
// INT8) exactly as pyquant.ops.reference.quantize_activations does it:
//   s = max|x_b| / 127,  q = clamp(rint(x / s), -127, 127) (0 when s is not > 0),  x ~= q * s.
// A row holding a NaN or an Inf gives NaN outputs (the reference's q * s is NaN there).
//
// INT4 decode (M <= 8, or <= 16 when K >= 1024) multiplies codes and q as integers (llama.cpp's
// Q4 x Q8 dot product):
//   y[n] = sum_g sw[n,g] * s[g] * sum_{k in g} code_k q_k  -  sum_g sw[n,g] z[n,g] * (s[g] * sum_{k in g} q_k).
// A block of 4W bytes (one vector; 32 at AVX2, 64 at AVX-512) holds 8W codes; one AND gives the
// low nibbles, a shift and an AND the high ones, each met by 4W bytes of q permuted to match
// (per block the even codes' q, then the odd ones'); vpmaddubsw (u8 code x s8 q, pairs summed to
// s16) then sums in s16 over a group, vpmaddwd by 1 to s32, one conversion and one FMA per group.
// With AVX512-VNNI (V::kVnni and vnni_dot()) vpdpbusd multiplies and adds into s32 in one op
// instead, and a group's blocks add up in s32: on Zen 4 at 4096 x 4096 from memory, G = 128,
// 1.04-1.08x at M = 2, 1.11-1.12x at M = 4, 1.21-1.23x at M = 8 (1.00x at M = 1, where memory
// sets the pace; bench/RESULTS.md, sixteenth session). Same bits: the sums are exact either way.
// Integer sums are exact, so the only roundings are the scale products and the fp32 sums.
// Written once over the traits V (kI8Dot, lo4, hi4, maddubs, add16, sum16, kVnni, dpbusd); the
// scalar build runs a plain loop over the same layout.
// AVX2, L1-resident, one core: 2.4-2.6x the weight-only loop's code-MACs per second; from memory
// at 4096 x 4096, M = 1, 1.08-1.21x the weight-only kernel (the tile's access pattern then sets
// the pace), M = 4 1.3-1.5x; from L3 1.6x (bench/RESULTS.md, twelfth session). The AVX-512 build
// (AVX512BW) had run the 256-bit code until the fifteenth session (bench/RESULTS.md).
// INT8 weights at as many rows, on AVX512-VNNI: decode_int8_a8 below. More rows run an integer
// GEMM on AMX-INT8 tiles (qmatmul_amx.h) or on AVX512-VNNI (qmatmul_dot_prefill.h). Everything
// else (INT8 weights without VNNI, more rows without VNNI) quantizes x into an fp32 copy q * s and
// runs the weight-only kernels on it.
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

// The most rows of x the INT4 decode tile takes (within decode_max_m(K)): at 4096 x 4096 with
// VNNI it beat the integer GEMM at 12 and 16 rows (1.31-1.57x, 1.12-1.36x) and lost at 24 with G = 128
// (0.91-0.96x; bench/RESULTS.md, sixteenth session).
constexpr int64_t kA8DecodeMaxM = 16;

struct A8Plan {
  int64_t G, ng, ngp, Kp, Kq;         // Kp = ng * G; Kq: Kp rounded up to kA8Block (q's padded length)
  AlignedVec<int8_t> qp;              // [M][Kq]: q permuted per block (qp_index)
  std::vector<float> sx, qsum;        // [M][ngp]: block scales, and s * sum q (zero-padded)
  std::vector<uint8_t> finite;        // [M]
};

// Codes per block of the tile: 8W (4W bytes, one vector of codes; 64 when W is 1).
constexpr int64_t kA8Block = V::W >= 8 ? 8 * V::W : 64;

// Where q[k] sits in the tile's order: per block, its even codes, then its odd ones (they meet
// the low and the high nibbles of the block's bytes).
static inline int64_t qp_index(int64_t k) {
  constexpr int64_t B = kA8Block;
  return (k & ~(B - 1)) + ((k & 1) ? B / 2 : 0) + ((k & (B - 1)) >> 1);
}

// q[0..Kq) (Kq a multiple of kA8Block) into the tile's order (qp_index).
static inline void permute_q(const int8_t* q, int64_t Kq, int8_t* dst) {
  int64_t k = 0;
#if defined(__AVX2__)
  // per 64 codes: in each 128-bit lane even bytes to the low 8, odd to the high 8; then gather
  // the quads: 32 even codes and 32 odd ones, stored at their places in the block
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (; k < Kq; k += 64) {
    const __m256i a = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k)), split), 0xD8);
    const __m256i b = _mm256_permute4x64_epi64(
        _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + k + 32)), split), 0xD8);
    int8_t* even = dst + qp_index(k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(even), _mm256_permute2x128_si256(a, b, 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(even + kA8Block / 2), _mm256_permute2x128_si256(a, b, 0x31));
  }
#endif
  for (; k < Kq; ++k) dst[qp_index(k)] = q[k];
}

// A tile of R weight rows (bytes q + r * row_bytes, fp32 scales sw[r]) and MC rows of x (int8
// codes xq[m] permuted as above, block scales sx[m]): out[r][m] = sum_g sw * sx * (codes . q).
// Each row's nibbles are isolated once per block and serve the MC rows of x. A block's s32 lane
// l (after sum16) holds codes 8l..8l+7, so when G < 8W lane l belongs to group 8l / G and its
// scale comes from scale_block, as in the weight-only tile; a last block past the row's end (G <
// 8W, a group count not a multiple of 8W / G) is read from a zero-padded copy.
// VV: V, named so that only the builds with integer dot products (kI8Dot) compile the vector body.
template <int MC, int R, bool Vnni = false, class VV = V>
__attribute__((noinline)) static void a8_tile(const int8_t* const* xq, const float* const* sx, const uint8_t* q,
                                              int64_t row_bytes, const float* const* sw, const A8Plan& p,
                                              float out[R][MC]) {
  const int64_t G = p.G, ng = p.ng;
  if constexpr (VV::kI8Dot) {
    using F = typename VV::F;
    using I = typename VV::I;
    constexpr int64_t BC = 8 * VV::W, BB = 4 * VV::W;  // codes and bytes per block
    F tot[R][MC];
    for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) tot[r][m] = VV::zero();
    // a row's codes in block b (bytes src) times x row m's, added to acc[m] (or, with First,
    // written there): s16 pair sums, or with Vnni s32 quad sums (vpdpbusd)
    auto dot = [&](const uint8_t* src, int64_t b, I (&acc)[MC], auto First) {
      const I v = VV::loadi(src), lo = VV::lo4(v), hi = VV::hi4(v);
      for (int m = 0; m < MC; ++m) {
        const auto* x = reinterpret_cast<const uint8_t*>(xq[m] + b * BC);
        if constexpr (Vnni) {
          acc[m] = VV::dpbusd(VV::dpbusd(First ? I{} : acc[m], lo, VV::loadi(x)), hi, VV::loadi(x + BB));
        } else {
          const I d = VV::add16(VV::maddubs(lo, VV::loadi(x)), VV::maddubs(hi, VV::loadi(x + BB)));
          acc[m] = First ? d : VV::add16(acc[m], d);
        }
      }
    };
    auto to_float = [](I acc) { if constexpr (Vnni) return VV::cvt(acc); else return VV::sum16(acc); };
    constexpr std::true_type first{};
    constexpr std::false_type next{};
    if (G >= BC) {
      // A group is G / BC whole blocks, summed in s16: a lane takes 4 products of at most 15 x 127
      // per block, 16 at G = 256 and W = 8 (30480 < 2^15: no saturation).
      const int64_t bpg = G / BC;
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t b0 = g * bpg;
        I s16[R][MC];
        prefetch_tile_ahead(q + b0 * R * BB, R * BB);
        for (int r = 0; r < R; ++r) dot(q + r * row_bytes + b0 * BB, b0, s16[r], first);
        for (int64_t b = b0 + 1; b < b0 + bpg; ++b) {
          prefetch_tile_ahead(q + b * R * BB, R * BB);
          for (int r = 0; r < R; ++r) dot(q + r * row_bytes + b * BB, b, s16[r], next);
        }
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < MC; ++m)
            tot[r][m] = VV::fma(to_float(s16[r][m]), VV::set1(sw[r][g] * sx[m][g]), tot[r][m]);
      }
    } else {  // BC / G groups per block, G / 8 lanes each
      const int64_t gpb = BC / G, nfull = ng / gpb;
      const int lpg = static_cast<int>(G / 8);
      auto block = [&](int64_t b, const uint8_t* const* src) {  // src[r]: row r's bytes of block b
        prefetch_tile_ahead(q + b * R * BB, R * BB);
        F sxv[MC];
        for (int m = 0; m < MC; ++m) sxv[m] = VV::scale_block(sx[m] + b * gpb, lpg);
        for (int r = 0; r < R; ++r) {
          I d[MC];
          dot(src[r], b, d, first);
          const F s = VV::scale_block(sw[r] + b * gpb, lpg);
          for (int m = 0; m < MC; ++m) tot[r][m] = VV::fma(to_float(d[m]), VV::fma(s, sxv[m], VV::zero()), tot[r][m]);
        }
      };
      const uint8_t* src[R];
      for (int64_t b = 0; b < nfull; ++b) {
        for (int r = 0; r < R; ++r) src[r] = q + r * row_bytes + b * BB;
        block(b, src);
      }
      if (nfull * gpb < ng) {  // a last block running past the rows' end: zero-padded copies
        alignas(64) uint8_t pad[R][BB] = {};
        for (int r = 0; r < R; ++r) {
          std::memcpy(pad[r], q + r * row_bytes + nfull * BB, row_bytes - nfull * BB);
          src[r] = pad[r];
        }
        block(nfull, src);
      }
    }
    for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) out[r][m] = VV::hsum(tot[r][m]);
  } else {
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
  }
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
  p.Kq = (p.Kp + kA8Block - 1) / kA8Block * kA8Block;
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
  const bool vnni = V::kVnni && vnni_dot();
  // fp32 scales read where they lie, as decode_int4 does (scales_in_place): against the copy,
  // 4096 x 4096 1.07x and 1536 x 576 1.13x at M = 1 from memory, with the scales prefetched as
  // decode_int4 prefetches them (bench/RESULTS.md, thirtieth session).
  // With a partial vector of groups (ng not a multiple of W) only at M = 1: this epilogue sums
  // each row's zero-point term anew for every row of x, and in place (s * z formed each time)
  // the demo model's 1536 x 576 and 576 x 1536 ran 0.94x the copy at M = 4 and 8 (bench/RESULTS.md,
  // thirty-second session).
  const bool in_place = scales_in_place(a, p.G < kA8Block && p.ng % (kA8Block / p.G) != 0) &&
                        (p.ng % W == 0 || M == 1);
  const bool prefetch_scales = scales_worth_prefetching(row_bytes);
  const int nt = threads_for(a);
  TileRanges ranges(nblk, nt);
#pragma omp parallel num_threads(nt)
  {
    static thread_local std::vector<float> sbuf;  // this thread's own
    sbuf.assign(8 * p.ngp, 0.f);  // 4 rows' scales, then their s * z; zero padding to ngp
    ranges.run(omp_get_thread_num(), [&](int64_t bi) {
      const int64_t n0 = bi * 4, nr = std::min<int64_t>(4, N - n0);
      const float* sw[4];
      if (n0 + 4 < N && prefetch_scales) prefetch_scales_zeros(a, n0 + 4, std::min<int64_t>(4, N - n0 - 4), p.ng);
      for (int64_t r = 0; r < nr; ++r) {
        if (in_place) {
          sw[r] = static_cast<const float*>(a.scales) + (n0 + r) * p.ng;
          continue;
        }
        row_scales_zeros(a, n0 + r, p.ng, sbuf.data() + r * p.ngp, sbuf.data() + (4 + r) * p.ngp);
        sw[r] = sbuf.data() + r * p.ngp;
      }
      const auto* q = static_cast<const uint8_t*>(a.qw) + n0 * row_bytes;
      float yt[4][kA8DecodeMaxM];  // [r][m]
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
        auto run = [&](auto MC, auto Vnni) {
          constexpr int mc = decltype(MC)::value;
          constexpr bool vn = decltype(Vnni)::value;
          float o[4][mc];
          int64_t r = 0;
          for (; r + Rt <= nr; r += Rt) a8_tile<mc, Rt, vn>(xq, sx, q + r * row_bytes, row_bytes, sw + r, p, o + r);
          for (; r < nr; ++r) a8_tile<mc, 1, vn>(xq, sx, q + r * row_bytes, row_bytes, sw + r, p, o + r);
          for (int64_t rr = 0; rr < nr; ++rr) for (int m = 0; m < mc; ++m) yt[rr][m0 + m] = o[rr][m];
          m0 += mc;
        };
        auto run_mc = [&](auto MC) {
          if (vnni) run(MC, std::bool_constant<V::kVnni>{});
          else run(MC, std::false_type{});
        };
        if (M - m0 >= 2) run_mc(std::integral_constant<int, MCmax>{});
        else run_mc(std::integral_constant<int, 1>{});
      }
      for (int64_t m = 0; m < M; ++m) {
        float vals[4];
        for (int64_t r = 0; r < nr; ++r) {
          const float v = yt[r][m] - row_zero_term(a, n0 + r, p.ng, p.ngp, in_place, sw[r],
                                                   sbuf.data() + (4 + r) * p.ngp, p.qsum.data() + m * p.ngp);
          vals[r] = p.finite[m] ? v + (a.bias ? load_one(a.bias, a.ydt, n0 + r) : 0.f) : NAN;
        }
        store_row(vals, a.ydt, nr, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n0 * dsize(a.ydt));
      }
    });
  }
}

// ---- INT8 weights, few rows, on AVX512-VNNI -------------------------------------------------
// y[m, n] = sw[n] sx[m] sum_k w[n,k] q[m,k]: one scale each (x's block is the row). vpdpbusd takes
// W's bytes as unsigned, w + 128 (one XOR per 4W bytes, shared by x's rows), and q as signed:
// sum_k (w_k + 128) q_k - 128 sum_k q_k, exact in s32 lanes (each sums K / W products of at most
// 255 x 127, so K < 2^20) and in int64 across them. The one rounding is of that sum times the
// two scales (in double). Tiles of 4 W rows by up to 4 x rows: W comes from memory once a tile,
// from L1 in its later passes. The fp32 path it replaces (q * s through decode_int8) and the
// GEMM (which packs W first) were 1.6-2.0x and 1.3-1.8x slower at 4096 x 4096 (bench/RESULTS.md,
// seventeenth session).
// The most rows of x decode_int8_a8 takes. Against the GEMM, 4096 x 4096 from memory, it won up to
// 24 rows (1.06x at 24); at K = 1536 up to 12 (1.05x; 0.96x at 16); at K = 576 it lost from 9 rows
// (0.74x; Zen 4, bench/decode_ab.sh, seventeenth session).
static inline int64_t a8_int8_max_m(int64_t K) { return K >= 4096 ? kDecodeMaxM : K >= 1024 ? 12 : 8; }

struct A8Int8Plan {
  AlignedVec<int8_t> q;         // [M][K]: x's codes
  std::vector<float> sx;        // [M]
  std::vector<int64_t> qsum;    // [M]: 128 sum_k q
  std::vector<uint8_t> finite;  // [M]
};

template <int MC, int R, class VV>
__attribute__((noinline)) static void a8_int8_tile(const int8_t* const* xq, const int8_t* w, int64_t K,
                                                   int64_t out[R][MC]) {
  using I = typename VV::I;
  constexpr int B = 4 * VV::W;  // bytes a vector
  I acc[R][MC];
  for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) acc[r][m] = VV::zero_i();
  const int64_t kv = K / B * B;
  for (int64_t k = 0; k < kv; k += B) {
    I u[R];
    for (int r = 0; r < R; ++r) {
      u[r] = VV::flip_bytes(VV::loadi(reinterpret_cast<const uint8_t*>(w + r * K + k)));  // w + 128
      __builtin_prefetch(w + r * K + k + kPrefetchBytes, 0, kPrefetchLocality);
    }
    for (int m = 0; m < MC; ++m) {
      const I x = VV::loadi(reinterpret_cast<const uint8_t*>(xq[m] + k));
      for (int r = 0; r < R; ++r) acc[r][m] = VV::dpbusd(acc[r][m], u[r], x);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) {
      alignas(64) int32_t t[VV::W];
      VV::storei(reinterpret_cast<uint8_t*>(t), acc[r][m]);
      int64_t sum = 0;
      for (int32_t v : t) sum += v;
      for (int64_t k = kv; k < K; ++k) sum += (int64_t{w[r * K + k]} + 128) * xq[m][k];  // the last K % 4W
      out[r][m] = sum;
    }
}

template <class VV = V>
static void decode_int8_a8(const QmmArgs& a) {
  static thread_local A8Int8Plan scratch;  // reused between calls; through a reference (see decode_int4)
  static thread_local std::vector<float> xr;
  A8Int8Plan& p = scratch;
  const int64_t M = a.M, K = a.K, N = a.N, nblk = (N + 3) / 4;
  p.q.assign(M * K, 0);
  p.sx.assign(M, 0.f);
  p.qsum.assign(M, 0);
  p.finite.assign(M, 1);
  xr.resize(K);
  for (int64_t m = 0; m < M; ++m) {
    load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, K, xr.data());
    int8_t* q = p.q.data() + m * K;
    p.finite[m] = act8_row(xr.data(), K, K, q, &p.sx[m]);
    for (int64_t k = 0; k < K; ++k) p.qsum[m] += 128 * q[k];
  }
  const auto* qw = static_cast<const int8_t*>(a.qw);
  const int nt = threads_for(a);
  TileRanges ranges(nblk, nt);
#pragma omp parallel num_threads(nt)
  {
    ranges.run(omp_get_thread_num(), [&](int64_t bi) {
      const int64_t n0 = bi * 4, nr = std::min<int64_t>(4, N - n0);
      float sw[4];
      for (int64_t r = 0; r < nr; ++r) row_scales(a, n0 + r, 1, sw + r);
      int64_t yt[4][kDecodeMaxM];  // [r][m]
      constexpr int MCmax = 4;
      for (int64_t m0 = 0; m0 < M; m0 += MCmax) {
        const int8_t* xq[MCmax];
        for (int m = 0; m < MCmax; ++m) xq[m] = p.q.data() + std::min<int64_t>(m0 + m, M - 1) * K;
        auto run = [&](auto MC) {
          constexpr int mc = decltype(MC)::value;
          int64_t o[4][mc];
          int64_t r = 0;
          if (nr == 4) a8_int8_tile<mc, 4, VV>(xq, qw + n0 * K, K, o), r = 4;
          for (; r < nr; ++r) a8_int8_tile<mc, 1, VV>(xq, qw + (n0 + r) * K, K, o + r);
          for (int64_t rr = 0; rr < nr; ++rr) for (int m = 0; m < mc; ++m) yt[rr][m0 + m] = o[rr][m];
        };
        switch (std::min<int64_t>(MCmax, M - m0)) {
          case 4: run(std::integral_constant<int, 4>{}); break;
          case 3: run(std::integral_constant<int, 3>{}); break;
          case 2: run(std::integral_constant<int, 2>{}); break;
          default: run(std::integral_constant<int, 1>{}); break;
        }
      }
      for (int64_t m = 0; m < M; ++m) {
        float vals[4];
        for (int64_t r = 0; r < nr; ++r) {
          const double v = static_cast<double>(yt[r][m] - p.qsum[m]) * sw[r] * p.sx[m];
          vals[r] = p.finite[m] ? static_cast<float>(v) + (a.bias ? load_one(a.bias, a.ydt, n0 + r) : 0.f) : NAN;
        }
        store_row(vals, a.ydt, nr, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n0 * dsize(a.ydt));
      }
    });
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

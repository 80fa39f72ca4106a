// The instruction-throughput ceiling of the CPU decode kernels' inner loops, one core, data in
// L1, so memory plays no part: how many code x activation multiply-adds per second each way of
// turning weight codes into floats allows. Same loop shape as csrc/cpu/qmatmul_kernels.h (4
// weight rows share each x load); ratios are printed from one run. The tile rows time the
// batched kernel's shapes (MC activation rows x R weight rows). Built with AVX-512 (and BF16)
// flags it also times the INT4 loop at 16 lanes, with the kernel's scale fold per 128 codes, and
// gives each of those rows as a share of the core's measured FMA issue rate (the "fma peak" rows:
// the ceiling of every loop that spends one FMA lane a code). Build with -O3 to compare with the
// peak: at -O2 GCC 12 leaves the row loops rolled and the accumulators in memory (4x slower).
//
//   g++ -O3 -mavx2 -mfma bench/decode_ceiling.cpp -o /tmp/decode_ceiling && /tmp/decode_ceiling
//   g++ -O3 -mavx2 -mfma -mavx512f -mavx512bw -mavx512bf16 bench/decode_ceiling.cpp -o /tmp/dc512
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

constexpr int K = 2048, R = 4, NB8 = K / 32;
alignas(64) static uint8_t q4[8][K / 2];  // up to 8 weight rows (the 8-row AVX-512 variant)
alignas(64) static int8_t q8[R][K];
alignas(64) static float xp[K];
alignas(64) static float xm[4][K];  // 4 activation rows for the batched tiles

static inline float hsum(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

// Vector traits of the INT4 loop: 8 lanes (AVX2) and, where the build has it, 16 (AVX-512).
struct T256 {
  using F = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F load(const float* p) { return _mm256_load_ps(p); }
  static I loadi(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static I band(I v, int mask) { return _mm256_and_si256(v, _mm256_set1_epi32(mask)); }
  template <int N> static I srl(I v) { return _mm256_srli_epi32(v, N); }
  static F asf(I v) { return _mm256_castsi256_ps(v); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static float sum(F v) { return hsum(v); }
};
#ifdef __AVX512F__
struct T512 {
  using F = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F load(const float* p) { return _mm512_load_ps(p); }
  static I loadi(const uint8_t* p) { return _mm512_load_si512(p); }
  static I band(I v, int mask) { return _mm512_and_si512(v, _mm512_set1_epi32(mask)); }
  template <int N> static I srl(I v) { return _mm512_srli_epi32(v, N); }
  static F asf(I v) { return _mm512_castsi512_ps(v); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }
};
#endif

// INT4, convert: AND (or shift) + int->float conversion + FMA per W codes.
// INT4, subnormal: AND + FMA per W codes (the masked lane read as a subnormal float).
// A: FMA chains per (row, x row) (the kernel has 1; A = 2 asks whether FMA latency binds).
// MC x RR: activation rows x weight rows of a tile, MC * RR * A accumulators, each AND shared by
// MC FMAs (M = 1: 1 x 4 over xp; the batched kernel's tiles over xm, scaled as the kernel
// scales x so that products are normal numbers).
// Fold: as the kernel does for groups of 128, the accumulators start from zero every 128 codes
// and are then added into a total with one FMA by a scale each.
template <class T, bool Sub, int A = 1, int MC = 1, int RR = R, bool Fold = false>
__attribute__((noinline)) float int4_loop() {
  using F = typename T::F;
  using I = typename T::I;
  constexpr int W = T::W, NB = K / (8 * W), BPF = 128 / (8 * W);  // blocks, blocks per fold
  F acc[RR][MC][A], tot[RR][MC];
  for (auto& row : acc) for (auto& m : row) for (auto& a : m) a = T::zero();
  for (auto& row : tot) for (auto& m : row) m = T::zero();
  for (int b = 0; b < NB; ++b) {
    I v[RR];
    for (int r = 0; r < RR; ++r) v[r] = T::loadi(q4[r] + b * 4 * W);
    auto step = [&](auto S_) {
      constexpr int S = decltype(S_)::value;
      F xs[MC];
      for (int m = 0; m < MC; ++m) xs[m] = T::load((MC == 1 ? xp : xm[m]) + b * 8 * W + S * W);
      for (int r = 0; r < RR; ++r) {
        F c;
        if constexpr (Sub) c = T::asf(T::band(v[r], 15 << (4 * (S & 3))));
        else if constexpr (S == 7) c = T::cvt(T::template srl<28>(v[r]));
        else c = T::cvt(T::band(v[r], 15 << (4 * S)));
        for (int m = 0; m < MC; ++m) acc[r][m][S % A] = T::fma(c, xs[m], acc[r][m][S % A]);
      }
      if constexpr (Sub && S == 3)
        for (int r = 0; r < RR; ++r) v[r] = T::template srl<16>(v[r]);
    };
    step(std::integral_constant<int, 0>{}); step(std::integral_constant<int, 1>{});
    step(std::integral_constant<int, 2>{}); step(std::integral_constant<int, 3>{});
    step(std::integral_constant<int, 4>{}); step(std::integral_constant<int, 5>{});
    step(std::integral_constant<int, 6>{}); step(std::integral_constant<int, 7>{});
    if constexpr (Fold)
      if ((b + 1) % BPF == 0)
        for (int r = 0; r < RR; ++r)
          for (int m = 0; m < MC; ++m) {
            F t = acc[r][m][0];
            for (int a = 1; a < A; ++a) t = T::add(t, acc[r][m][a]);
            tot[r][m] = T::fma(t, T::set1(1.f + 0.001f * b), tot[r][m]);
            for (int a = 0; a < A; ++a) acc[r][m][a] = T::zero();
          }
  }
  float s = 0.f;
  for (auto& row : acc) for (auto& m : row) for (auto& a : m) s += T::sum(a);
  for (auto& row : tot) for (auto& m : row) s += T::sum(m);
  return s;
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
// INT4 with bf16 x (the kernel's dec4_tile_bf16): per 32 codes a shift, a ternary-logic op and a
// vdpbf16ps (two codes per lane, each read as the bf16 1 + c/16), the fold per 128 codes.
alignas(64) static uint16_t xb[K];
__attribute__((noinline)) float int4_bf16_loop() {
  __m512 acc[R], tot[R];
  for (int r = 0; r < R; ++r) acc[r] = tot[r] = _mm512_setzero_ps();
  for (int b = 0; b < K / 128; ++b) {
    __m512i v[R];
    for (int r = 0; r < R; ++r) v[r] = _mm512_load_si512(q4[r] + b * 64);
    auto step = [&](auto S_) {
      constexpr int S = decltype(S_)::value;
      const __m512i xs = _mm512_load_si512(xb + b * 128 + S * 32);
      for (int r = 0; r < R; ++r) {
        const __m512i t = S == 0 ? _mm512_slli_epi16(v[r], 3) : _mm512_srli_epi16(v[r], 4 * S - 3);
        const __m512i c = _mm512_ternarylogic_epi32(t, _mm512_set1_epi16(0x78), _mm512_set1_epi16(0x3f80), 0xEA);
        acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)c, (__m512bh)xs);
      }
    };
    step(std::integral_constant<int, 0>{}); step(std::integral_constant<int, 1>{});
    step(std::integral_constant<int, 2>{}); step(std::integral_constant<int, 3>{});
    for (int r = 0; r < R; ++r) {
      tot[r] = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(1.f + 0.001f * b), tot[r]);
      acc[r] = _mm512_setzero_ps();
    }
  }
  float s = 0.f;
  for (int r = 0; r < R; ++r) s += _mm512_reduce_add_ps(tot[r]);
  return s;
}
#endif

// INT8, convert: sign-extending load + conversion + FMA per 8 codes.
// INT8, subnormal: per 32 codes one XOR (sign bits); bytes 0-2 one AND each, byte 3 one shift; an FMA per 8 codes.
template <bool Sub>
__attribute__((noinline)) float int8_loop() {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int b = 0; b < NB8; ++b) {
    if constexpr (Sub) {
      __m256i u[R];
      for (int r = 0; r < R; ++r)
        u[r] = _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(q8[r] + b * 32)),
                                _mm256_set1_epi32(static_cast<int>(0x80808080u)));
      for (int j = 0; j < 4; ++j) {
        const __m256 xs = _mm256_load_ps(xp + b * 32 + j * 8);
        for (int r = 0; r < R; ++r) {
          const __m256i cj = j < 3 ? _mm256_and_si256(u[r], _mm256_set1_epi32(0xFF << (8 * j))) : _mm256_srli_epi32(u[r], 24);
          const __m256 c = _mm256_castsi256_ps(cj);
          acc[r] = _mm256_fmadd_ps(c, xs, acc[r]);
        }
      }
    } else {
      for (int j = 0; j < 4; ++j) {
        const __m256 xs = _mm256_load_ps(xp + b * 32 + j * 8);
        for (int r = 0; r < R; ++r) {
          const __m128i raw = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q8[r] + b * 32 + j * 8));
          acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(raw)), xs, acc[r]);
        }
      }
    }
  }
  float s = 0.f;
  for (int r = 0; r < R; ++r) s += hsum(acc[r]);
  return s;
}

// The core's FMA issue rate, the ceiling every loop above shares (each multiply-add takes one
// FMA lane; only the bf16 dot products, two codes a lane, can pass it): 12 independent chains of
// register-only FMAs, enough to cover the FMA latency on every core here. Inline asm, so the
// compiler can neither drop nor spill them; PQ_REG names the register file (ymm or zmm).
#define PQ_FMA(n) "vfmadd231ps %%" PQ_REG "12, %%" PQ_REG "13, %%" PQ_REG #n "\n\t"
#define PQ_FMA_PEAK_LOOP(name)                                                                  \
  __attribute__((noinline)) float name() {                                                      \
    for (int it = 0; it < 512; ++it)                                                            \
      asm volatile(PQ_FMA(0) PQ_FMA(1) PQ_FMA(2) PQ_FMA(3) PQ_FMA(4) PQ_FMA(5) PQ_FMA(6) PQ_FMA(7) \
                   PQ_FMA(8) PQ_FMA(9) PQ_FMA(10) PQ_FMA(11) ::: "xmm0", "xmm1", "xmm2", "xmm3",   \
                   "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11");            \
    return 0.f;                                                                                 \
  }
#define PQ_REG "ymm"
PQ_FMA_PEAK_LOOP(fma_peak_ymm)  // 512 x 12 FMAs of 8 lanes
#undef PQ_REG
#ifdef __AVX512F__
#define PQ_REG "zmm"
PQ_FMA_PEAK_LOOP(fma_peak_zmm)  // 512 x 12 FMAs of 16 lanes
#undef PQ_REG
#endif

template <class Fn>
static double gmacs(Fn fn, int macs_per_call = R * K) {  // best of 20 rounds of 2000 calls: G multiply-adds per second
  volatile float sink = fn();
  double best = 1e30;
  for (int round = 0; round < 20; ++round) {
    auto t0 = std::chrono::steady_clock::now();
    for (int it = 0; it < 2000; ++it) sink = fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  (void)sink;
  return 2000.0 * macs_per_call / best / 1e9;
}

int main() {
  for (auto& row : q4) for (auto& c : row) c = static_cast<uint8_t>(std::rand());
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < K; ++i) q8[r][i] = static_cast<int8_t>(std::rand());
  for (int i = 0; i < K; ++i) xp[i] = static_cast<float>(std::rand()) / RAND_MAX - 0.5f;
  for (auto& row : xm) for (float& v : row) v = 1e30f * (static_cast<float>(std::rand()) / RAND_MAX - 0.5f);
  const double c4 = gmacs(int4_loop<T256, false>), s4 = gmacs(int4_loop<T256, true>), s4a = gmacs(int4_loop<T256, true, 2>);
  const double c8 = gmacs(int8_loop<false>), s8 = gmacs(int8_loop<true>);
  const double peak8 = gmacs(fma_peak_ymm, 512 * 12 * 8);
  std::printf("one core, L1-resident, G multiply-adds/s\n");
  std::printf("fma peak (8 lanes) %6.2f  (12 independent FMA chains: the most any 8-lane loop here can reach)\n", peak8);
  std::printf("int4 convert   %6.2f\nint4 subnormal %6.2f  (%.2fx)\n", c4, s4, s4 / c4);
  std::printf("int4 subnormal-2chains %6.2f  (%.2fx: two FMA chains per row)\n", s4a, s4a / s4);
  std::printf("int8 convert   %6.2f\nint8 subnormal %6.2f  (%.2fx)\n", c8, s8, s8 / c8);
  // x scaled as the kernel scales it (products are normal numbers, not subnormal ones)
  std::printf("int4 subnormal tiles, x rows MC x weight rows R:\n");
  std::printf("  1 x 4 %6.2f\n  2 x 4 %6.2f\n  3 x 4 %6.2f\n  4 x 2 %6.2f\n", s4, gmacs(int4_loop<T256, true, 1, 2, 4>, 8 * K),
              gmacs(int4_loop<T256, true, 1, 3, 4>, 12 * K), gmacs(int4_loop<T256, true, 1, 4, 2>, 8 * K));
#ifdef __AVX512F__
  // 16 lanes, M = 1 (x as the kernel scales it): the kernel's loop is "subnormal+fold"
  for (float& v : xp) v *= 1e30f;
  const double f = gmacs(int4_loop<T512, true, 1, 1, R, true>), peak16 = gmacs(fma_peak_zmm, 512 * 12 * 16);
  std::printf("avx512 int4, 1 x row (share of the 16-lane FMA peak, %.2f, in brackets):\n", peak16);
  auto row = [&](const char* name, double g) { std::printf("  %-24s %6.2f  (%.2f, %.2fx the fold)\n", name, g, g / peak16, g / f); };
  row("subnormal", gmacs(int4_loop<T512, true>));
  row("subnormal+fold", f);
  row("subnormal+fold-2chains", gmacs(int4_loop<T512, true, 2, 1, R, true>));
  row("subnormal+fold-8rows", gmacs(int4_loop<T512, true, 1, 1, 8, true>, 8 * K));
  row("convert+fold", gmacs(int4_loop<T512, false, 1, 1, R, true>));
#ifdef __AVX512BF16__
  for (auto& v : xb) v = static_cast<uint16_t>(0x3f80 + (std::rand() & 0x7f));
  row("bf16dot+fold", gmacs(int4_bf16_loop));
#endif
#endif
}

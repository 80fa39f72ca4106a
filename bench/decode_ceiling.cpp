// The instruction-throughput ceiling of the CPU decode kernels' inner loops (AVX2), one core,
// data in L1, so memory plays no part: how many code x activation multiply-adds per second each
// way of turning weight codes into floats allows. Same loop shape as csrc/cpu/qmatmul_kernels.h
// (4 weight rows share each x load); ratios are printed from one run. The tile rows time the
// batched kernel's shapes (MC activation rows x R weight rows).
//
//   g++ -O3 -mavx2 -mfma bench/decode_ceiling.cpp -o /tmp/decode_ceiling && /tmp/decode_ceiling
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

constexpr int K = 2048, R = 4, NB4 = K / 64, NB8 = K / 32;
alignas(64) static uint8_t q4[R][K / 2];
alignas(64) static int8_t q8[R][K];
alignas(64) static float xp[K];
alignas(64) static float xm[4][K];  // 4 activation rows for the batched tiles

static inline float hsum(__m256 v) {
  alignas(32) float t[8];
  _mm256_store_ps(t, v);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}

// INT4, convert: AND (or shift) + int->float conversion + FMA per 8 codes.
// INT4, subnormal: AND + FMA per 8 codes (the masked lane read as a subnormal float).
// A: FMA chains per (row, x row) (the kernel has 1; A = 2 asks whether FMA latency binds).
// MC x RR: activation rows x weight rows of a tile, MC * RR * A accumulators, each AND shared by
// MC FMAs (M = 1: 1 x 4 over xp; the batched kernel's tiles over xm, scaled as the kernel
// scales x so that products are normal numbers).
template <bool Sub, int A = 1, int MC = 1, int RR = R>
__attribute__((noinline)) float int4_loop() {
  __m256 acc[RR][MC][A];
  for (auto& row : acc) for (auto& m : row) for (auto& a : m) a = _mm256_setzero_ps();
  for (int b = 0; b < NB4; ++b) {
    __m256i v[RR];
    for (int r = 0; r < RR; ++r) v[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q4[r] + b * 32));
    auto step = [&](auto S_) {
      constexpr int S = decltype(S_)::value;
      __m256 xs[MC];
      for (int m = 0; m < MC; ++m) xs[m] = _mm256_load_ps((MC == 1 ? xp : xm[m]) + b * 64 + S * 8);
      for (int r = 0; r < RR; ++r) {
        __m256 c;
        if constexpr (Sub) c = _mm256_castsi256_ps(_mm256_and_si256(v[r], _mm256_set1_epi32(15 << (4 * (S & 3)))));
        else if constexpr (S == 7) c = _mm256_cvtepi32_ps(_mm256_srli_epi32(v[r], 28));
        else c = _mm256_cvtepi32_ps(_mm256_and_si256(v[r], _mm256_set1_epi32(15 << (4 * S))));
        for (int m = 0; m < MC; ++m) acc[r][m][S % A] = _mm256_fmadd_ps(c, xs[m], acc[r][m][S % A]);
      }
      if constexpr (Sub && S == 3)
        for (int r = 0; r < RR; ++r) v[r] = _mm256_srli_epi32(v[r], 16);
    };
    step(std::integral_constant<int, 0>{}); step(std::integral_constant<int, 1>{});
    step(std::integral_constant<int, 2>{}); step(std::integral_constant<int, 3>{});
    step(std::integral_constant<int, 4>{}); step(std::integral_constant<int, 5>{});
    step(std::integral_constant<int, 6>{}); step(std::integral_constant<int, 7>{});
  }
  float s = 0.f;
  for (auto& row : acc) for (auto& m : row) for (auto& a : m) s += hsum(a);
  return s;
}

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
  for (int r = 0; r < R; ++r) {
    for (int i = 0; i < K / 2; ++i) q4[r][i] = static_cast<uint8_t>(std::rand());
    for (int i = 0; i < K; ++i) q8[r][i] = static_cast<int8_t>(std::rand());
  }
  for (int i = 0; i < K; ++i) xp[i] = static_cast<float>(std::rand()) / RAND_MAX - 0.5f;
  for (auto& row : xm) for (float& v : row) v = 1e30f * (static_cast<float>(std::rand()) / RAND_MAX - 0.5f);
  const double c4 = gmacs(int4_loop<false>), s4 = gmacs(int4_loop<true>), s4a = gmacs(int4_loop<true, 2>);
  const double c8 = gmacs(int8_loop<false>), s8 = gmacs(int8_loop<true>);
  std::printf("one core, L1-resident, G multiply-adds/s\n");
  std::printf("int4 convert   %6.2f\nint4 subnormal %6.2f  (%.2fx)\n", c4, s4, s4 / c4);
  std::printf("int4 subnormal-2chains %6.2f  (%.2fx: two FMA chains per row)\n", s4a, s4a / s4);
  std::printf("int8 convert   %6.2f\nint8 subnormal %6.2f  (%.2fx)\n", c8, s8, s8 / c8);
  // x scaled as the kernel scales it (products are normal numbers, not subnormal ones)
  std::printf("int4 subnormal tiles, x rows MC x weight rows R:\n");
  std::printf("  1 x 4 %6.2f\n  2 x 4 %6.2f\n  3 x 4 %6.2f\n  4 x 2 %6.2f\n", s4, gmacs(int4_loop<true, 1, 2, 4>, 8 * K),
              gmacs(int4_loop<true, 1, 3, 4>, 12 * K), gmacs(int4_loop<true, 1, 4, 2>, 8 * K));
}

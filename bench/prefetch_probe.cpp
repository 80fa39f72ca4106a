// How the INT4 decode loop's reading from memory depends on where its software prefetches sit and
// on how the rows are shared between threads, with the loop alone (no scales, no zero-points, no
// Python): 2 GiB of codes swept on all threads, the same bytes from a 256 KiB buffer ("cached",
// the loop's own speed), medians of 5. The loop is the kernel's fp32-x step (AND, convert, FMA per
// 16 codes, 4 weight rows sharing each x load), in tiles of 4 rows x 2 KiB (K = 4096), each
// block's 4 lines prefetched 8 KiB ahead in address order as csrc/cpu/qmatmul_kernels.h does.
//   burst:  the 4 prefetches together at the top of the block
//   spread: one after every other step of the block's 8
//   static: each thread one contiguous half; dynN: OpenMP dynamic chunks of N tiles
// bench/RESULTS.md, twenty-seventh session, has its figures on an Intel Xeon.
//
//   g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx2 -mfma bench/prefetch_probe.cpp -o /tmp/prefetch_probe && /tmp/prefetch_probe [MiB]
// (the library's ISA flags, not -march=native: see bench/layout_probe.cpp)
// MiB: the size swept from memory (2048; a multiple of 8 MiB; give more than the last-level cache).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

constexpr int R = 4;                     // weight rows a tile
constexpr int64_t RB = 2048;             // bytes a row (K = 4096 codes)
constexpr int64_t kAhead = 8192;         // prefetch distance, as the kernel's
alignas(64) static float xs[2 * RB];     // x, permuted: 128 floats a block

static inline void prefetch_l2(const uint8_t* p) { asm volatile("prefetcht1 %0" : : "m"(*p)); }

template <bool Spread>
static inline float tile(const uint8_t* q) {
  __m512 acc[R];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t b = 0; b < RB / 64; ++b) {
    __m512i v[R];
    for (int r = 0; r < R; ++r) v[r] = _mm512_loadu_si512(q + r * RB + b * 64);
    const uint8_t* pf = q + b * R * 64 + kAhead;
    if (!Spread) for (int r = 0; r < R; ++r) prefetch_l2(pf + 64 * r);
    const float* x = xs + b * 128;
#define STEP(S, CODES)                                                                              \
    {                                                                                               \
      const __m512 xv = _mm512_loadu_ps(x + 16 * (S));                                              \
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(CODES), xv, acc[r]);  \
      if (Spread && ((S) & 1)) prefetch_l2(pf + 64 * ((S) >> 1));                                   \
    }
#define NIB(S) STEP(S, _mm512_and_si512(v[r], _mm512_set1_epi32(15u << (4 * (S)))))
    NIB(0) NIB(1) NIB(2) NIB(3) NIB(4) NIB(5) NIB(6) STEP(7, _mm512_srli_epi32(v[r], 28))
#undef NIB
#undef STEP
  }
  float s = 0;
  for (auto& a : acc) s += _mm512_reduce_add_ps(a);
  return s;
}

// Chunk 0: static (one contiguous range a thread), else dynamic chunks of that many tiles.
template <bool Spread>
__attribute__((noinline)) static float sweep(const uint8_t* buf, int64_t n, int64_t chunk) {
  const int64_t ntiles = n / (R * RB);
  float tot = 0;
#pragma omp parallel reduction(+ : tot)
  {
    if (chunk == 0) {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < ntiles; ++t) tot += tile<Spread>(buf + t * R * RB);
    } else {
#pragma omp for schedule(dynamic, chunk)
      for (int64_t t = 0; t < ntiles; ++t) tot += tile<Spread>(buf + t * R * RB);
    }
  }
  return tot;
}

template <bool Spread>
static void row(const char* name, const uint8_t* big, int64_t nbig, const uint8_t* small, int64_t nsmall,
                int64_t chunk) {
  std::vector<double> tm, tc;
  volatile float sink = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + sweep<Spread>(big, nbig, chunk);
    const auto t1 = std::chrono::steady_clock::now();
    for (int64_t o = 0; o < nbig; o += nsmall) sink = sink + sweep<Spread>(small, nsmall, chunk);
    const auto t2 = std::chrono::steady_clock::now();
    tm.push_back(std::chrono::duration<double>(t1 - t0).count());
    tc.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  std::sort(tm.begin(), tm.end());
  std::sort(tc.begin(), tc.end());
  std::printf("%-16s from memory %6.1f GB/s   cached %6.1f GB/s\n", name, nbig / tm[2] / 1e9, nbig / tc[2] / 1e9);
}

int main(int argc, char** argv) {
  for (int i = 0; i < 2 * RB; ++i) xs[i] = 1.0f / (i + 1);
  const int64_t mib = argc > 1 ? std::atoll(argv[1]) : 2048;
  if (mib < 8 || mib % 8) {
    std::fprintf(stderr, "usage: prefetch_probe [MiB, a multiple of 8]\n");
    return 2;
  }
  const int64_t nbig = mib << 20, nsmall = 256 << 10;
  auto* big = static_cast<uint8_t*>(std::aligned_alloc(4096, nbig));
  auto* small = static_cast<uint8_t*>(std::aligned_alloc(4096, nsmall));
  std::memset(big, 0x5a, nbig);
  std::memset(small, 0x5a, nsmall);
  std::printf("%d threads, %lld MiB, tiles of %d rows x %lld bytes, prefetch %lld bytes ahead\n", omp_get_max_threads(),
              static_cast<long long>(mib), R, static_cast<long long>(RB), static_cast<long long>(kAhead));
  // The small buffer has 32 tiles: the cached column of dyn64 runs on one thread.
  for (int64_t chunk : {int64_t{0}, int64_t{16}, int64_t{64}}) {
    char name[32];
    std::snprintf(name, sizeof name, chunk ? "dyn%lld burst" : "static burst", static_cast<long long>(chunk));
    row<false>(name, big, nbig, small, nsmall, chunk);
    std::snprintf(name, sizeof name, chunk ? "dyn%lld spread" : "static spread", static_cast<long long>(chunk));
    row<true>(name, big, nbig, small, nsmall, chunk);
  }
  std::free(big);
  std::free(small);
}

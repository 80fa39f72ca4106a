// How fast the INT4 decode loop reads its codes from memory, against a plain read of the same
// bytes timed in the same rounds, by how the codes are laid out and how far ahead they are
// prefetched. The loop is the kernel's fp32-x step on subnormal codes (an AND and an FMA per 16
// codes, 4 weight rows sharing each x load) with a scale fold per 128-code block, on 2 KiB rows
// (K = 4096) in tiles of 4 rows, OpenMP dynamic chunks of 1/16 of a layer's tiles (the decode
// kernels' split before they took TileRanges, csrc/cpu/qmatmul_kernels.h), one parallel region
// per 8 MiB layer (no zero-points, no Python):
//   row-major:   the format's layout (row r of a tile at r * 2 KiB): 4 streams a tile, the next
//                tile's lines prefetched into L2 in address order (prefetcht1), AHEAD bytes ahead
//   row-matched: the same, each row's line prefetched from the next tile's same row (AHEAD bytes
//                ahead of the line being read: the same lead for every row, not in address order)
//   rows in turn: one row at a time (one stream), its own line AHEAD bytes ahead
//   interleaved: the 4 rows' 64-byte blocks interleaved (block b of row r at (4b + r) * 64): one
//                stream a tile; a layout the format does not have
//   R4 / R8 ranges: the format's layout in tiles of 4 or 8 rows, each thread one contiguous half
//                of a layer's tiles (as the kernel's TileRanges give them when no thread falls
//                behind), the lines prefetched in address order AHEAD bytes ahead
// Every variant runs once per round, in turn; medians over the rounds. "cached": the same loop
// over 1 MiB again and again (the loop's own speed, all in L2).
// bench/RESULTS.md, twenty-eighth session, has its figures on an AMD EPYC (Zen 5).
//
//   g++ -O3 -fopenmp -mavx512f -mavx512bw -mavx2 -mfma bench/layout_probe.cpp -o /tmp/layout_probe && /tmp/layout_probe [MiB] [ROUNDS]
// The ISA flags as the library's build gives them, not -march=native: GCC 12 takes a Zen 5 for a
// Zen 3 there and, so tuned, reads each code vector from memory again at every step (an AND with
// a memory operand), which ran this loop at 0.67x from memory and 0.74x cached.
// MiB: the size swept from memory (256; a multiple of 8; give more than the last-level cache).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

constexpr int R = 4;                   // weight rows a tile
constexpr int64_t RB = 2048, TB = R * RB, kLayer = 8 << 20, kCached = 1 << 20;
alignas(64) static float xs[2 * RB];   // x, permuted: 128 floats a block
alignas(64) static float sc[RB / 64 + 8];  // a scale per block (and row: up to 8)

static inline void prefetch_l2(const uint8_t* p) { asm volatile("prefetcht1 %0" : : "m"(*p)); }

enum Layout { kRowMajor, kRowsInTurn, kInterleaved, kRowMajorMatched };

// Block b's 8 steps for NR rows of codes v[], each step's nibble (S & 3) after a 16-bit shift
// for S >= 4; acc[r] += code * x.
template <int NR>
static inline void block_steps(__m512i (&v)[NR], const float* x, __m512 (&acc)[NR]) {
  for (int S = 0; S < 8; ++S) {
    const __m512 xv = _mm512_load_ps(x + 16 * S);
    for (int r = 0; r < NR; ++r) {
      if (S == 4) v[r] = _mm512_srli_epi32(v[r], 16);
      const __m512i c = _mm512_and_si512(v[r], _mm512_set1_epi32(15u << (4 * (S & 3))));
      acc[r] = _mm512_fmadd_ps(_mm512_castsi512_ps(c), xv, acc[r]);
    }
  }
}

// A tile of NR rows in the format's layout (the kernel's shape with NR = 4).
template <int NR, int64_t Ahead>
static inline float tile_rows(const uint8_t* q) {
  __m512 tot[NR];
  for (auto& t : tot) t = _mm512_setzero_ps();
  for (int64_t b = 0; b < RB / 64; ++b) {
    __m512i v[NR];
    for (int r = 0; r < NR; ++r) v[r] = _mm512_load_si512(q + r * RB + b * 64);
    if (Ahead)
      for (int r = 0; r < NR; ++r) prefetch_l2(q + b * NR * 64 + Ahead + 64 * r);
    __m512 acc[NR];
    for (auto& a : acc) a = _mm512_setzero_ps();
    block_steps<NR>(v, xs + b * 128, acc);
    for (int r = 0; r < NR; ++r) tot[r] = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(sc[b + r]), tot[r]);
  }
  float s = 0;
  for (auto& t : tot) s += _mm512_reduce_add_ps(t);
  return s;
}

template <int NR, int64_t Ahead>
__attribute__((noinline)) static float sweep_ranges(const uint8_t* buf, int64_t n) {
  const int64_t ntiles = n / (NR * RB);
  float tot = 0;
#pragma omp parallel for reduction(+ : tot) schedule(static)
  for (int64_t t = 0; t < ntiles; ++t) tot += tile_rows<NR, Ahead>(buf + t * NR * RB);
  return tot;
}

template <int L, int64_t Ahead>
static inline float tile(const uint8_t* q) {
  if constexpr (L == kRowMajor) return tile_rows<R, Ahead>(q);
  float s = 0;
  if constexpr (L == kRowsInTurn) {
    for (int r = 0; r < R; ++r) {
      const uint8_t* row = q + r * RB;
      __m512 tot = _mm512_setzero_ps();
      for (int64_t b = 0; b < RB / 64; ++b) {
        __m512i v[1] = {_mm512_load_si512(row + b * 64)};
        if (Ahead) prefetch_l2(row + b * 64 + Ahead);
        __m512 acc[1] = {_mm512_setzero_ps()};
        block_steps<1>(v, xs + b * 128, acc);
        tot = _mm512_fmadd_ps(acc[0], _mm512_set1_ps(sc[b]), tot);
      }
      s += _mm512_reduce_add_ps(tot);
    }
    return s;
  }
  __m512 tot[R];
  for (auto& t : tot) t = _mm512_setzero_ps();
  for (int64_t b = 0; b < RB / 64; ++b) {
    __m512i v[R];
    for (int r = 0; r < R; ++r) v[r] = _mm512_load_si512(L == kInterleaved ? q + (b * R + r) * 64 : q + r * RB + b * 64);
    if (Ahead && L == kRowMajorMatched)
      for (int r = 0; r < R; ++r) prefetch_l2(q + r * RB + b * 64 + Ahead);
    else if (Ahead)
      for (int r = 0; r < R; ++r) prefetch_l2(q + b * R * 64 + Ahead + 64 * r);
    __m512 acc[R];
    for (auto& a : acc) a = _mm512_setzero_ps();
    block_steps<R>(v, xs + b * 128, acc);
    for (int r = 0; r < R; ++r) tot[r] = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(sc[b + r]), tot[r]);
  }
  for (auto& t : tot) s += _mm512_reduce_add_ps(t);
  return s;
}

template <int L, int64_t Ahead>
__attribute__((noinline)) static float sweep(const uint8_t* buf, int64_t n) {
  const int64_t ntiles = n / TB, chunk = std::max<int64_t>(ntiles / 16, 1);
  float tot = 0;
#pragma omp parallel for reduction(+ : tot) schedule(dynamic, chunk)
  for (int64_t t = 0; t < ntiles; ++t) tot += tile<L, Ahead>(buf + t * TB);
  return tot;
}

// The plain read: each thread one contiguous half, 64-byte loads summed as integers.
__attribute__((noinline)) static float stream(const uint8_t* buf, int64_t n) {
  float tot = 0;
#pragma omp parallel for reduction(+ : tot) schedule(static)
  for (int64_t c = 0; c < n / 4096; ++c) {
    __m512i a = _mm512_setzero_si512();
    for (int o = 0; o < 4096; o += 64) a = _mm512_add_epi32(a, _mm512_load_si512(buf + c * 4096 + o));
    tot += static_cast<float>(_mm512_reduce_add_epi32(a));
  }
  return tot;
}

int main(int argc, char** argv) {
  const int64_t mib = argc > 1 ? std::atoll(argv[1]) : 256;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 9;
  if (mib < 8 || mib % 8 || rounds < 1) {
    std::fprintf(stderr, "usage: layout_probe [MiB, a multiple of 8] [ROUNDS >= 1]\n");
    return 2;
  }
  for (int i = 0; i < 2 * RB; ++i) xs[i] = 1.0f / static_cast<float>(i + 1);
  for (auto& s : sc) s = 1.0f;
  const int64_t nbig = mib << 20, layers = nbig / kLayer;
  auto* big = static_cast<uint8_t*>(std::aligned_alloc(4096, nbig));
  auto* small = static_cast<uint8_t*>(std::aligned_alloc(4096, kCached));
  std::memset(big, 0x5a, nbig);
  std::memset(small, 0x5a, kCached);
  struct Variant {
    const char* name;
    float (*fn)(const uint8_t*, int64_t);
    std::vector<double> mem, cached;
  };
  std::vector<Variant> vs = {{"plain read", stream},
                             {"row-major 8K", sweep<kRowMajor, 8192>},
                             {"row-major 16K", sweep<kRowMajor, 16384>},
                             {"row-major none", sweep<kRowMajor, 0>},
                             {"row-matched 8K", sweep<kRowMajorMatched, 8192>},
                             {"rows in turn 8K", sweep<kRowsInTurn, 8192>},
                             {"interleaved 8K", sweep<kInterleaved, 8192>},
                             {"interleaved none", sweep<kInterleaved, 0>},
                             {"R4 ranges 8K", sweep_ranges<4, 8192>},
                             {"R8 ranges 16K", sweep_ranges<8, 16384>},
                             {"R8 ranges 24K", sweep_ranges<8, 24576>}};
  volatile float sink = 0;
  using Clock = std::chrono::steady_clock;
  for (int r = 0; r < rounds; ++r)
    for (auto& v : vs) {
      const auto t0 = Clock::now();
      for (int64_t l = 0; l < layers; ++l) sink = sink + v.fn(big + l * kLayer, kLayer);
      const auto t1 = Clock::now();
      for (int i = 0; i < 64; ++i) sink = sink + v.fn(small, kCached);
      const auto t2 = Clock::now();
      v.mem.push_back(std::chrono::duration<double>(t1 - t0).count() / static_cast<double>(nbig));
      v.cached.push_back(std::chrono::duration<double>(t2 - t1).count() / (64.0 * kCached));
    }
  auto median = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  const double plain = median(vs[0].mem);
  std::printf("%d threads, %lld MiB in 8 MiB layers, tiles of %d rows x %lld bytes, medians of %d rounds\n",
              omp_get_max_threads(), static_cast<long long>(mib), R, static_cast<long long>(RB), rounds);
  for (auto& v : vs)
    std::printf("%-17s from memory %6.1f GB/s  %.2fx plain read   cached %6.1f GB/s\n", v.name, 1e-9 / median(v.mem),
                plain / median(v.mem), 1e-9 / median(v.cached));
  std::free(big);
  std::free(small);
}

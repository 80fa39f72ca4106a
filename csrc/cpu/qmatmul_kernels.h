// qmatmul CPU kernels, written once over a vector-traits struct V and compiled per ISA:
// qmatmul.cpp (scalar, W=1), qmatmul_avx2.cpp (W=8), qmatmul_avx512.cpp (W=16). The includer
// defines PQ_ISA_NS and, inside pyquant::PQ_ISA_NS, a struct V with:
//   F, I (float / 32-bit-int vector), W (lanes), zero, set1, load, store, add, fma, hsum,
//   loadi (4W bytes), loadi_head(p, n) (W > 1: the first n bytes, zeros after), band(I, mask)
//   (lane & mask), cvt(I) (int lane -> float), asf(I) (lane read as a float), srl<N>(I)
//   (lane >> N), flip_bytes(I) (lane ^ 0x80808080), load_i8 / load_u8 (W int8 / uint8 -> float),
//   load_f16 (W fp16 -> float), scale_block(s, lpg) (lane l gets s[l / lpg]), gather16(p,
//   stride, out[4]) (lane l of out[j]: bytes 4j..4j+3 of row p + l * stride), kBf16Dot, and
//   where it is true nib_bf16<S> and dot_bf16 (below), kI8Dot, and where it is true lo4, hi4,
//   maddubs, add16, sum16 (the -a8 tile, qmatmul_a8.h), kVnni, and where it is true dpbusd (the
//   same tile on AVX512-VNNI).
// What is built from those (nib, bits, cvt_and, gather4) is defined once below.
// Everything here lives in the ISA namespace so no inline function is shared between TUs
// compiled with different instruction sets.
//
// Decode (M <= 8, or 24 when K >= 1024, fewer off AMD CPUs and with AMX; decode_rows): GEMV-like,
// several W rows per pass share each x load. INT4 bytes are read as 32-bit lanes: lane l of a
// 4W-byte block holds codes 8l..8l+7, nibble S of every lane is isolated with one AND (no
// shuffles), and x is permuted (and scaled by 2^-4S) once per call so that the matching x values
// sit in one vector. Per group (or per block when G < 8W):
// acc = sum(code * x), then total += acc * scale; the zero-points are applied once per row
// with precomputed group sums of x: y = sum_g s_g * (sum_k code_k x_k - z_g * sum_k x_k).
// Codes become floats one of two ways (subnormal_codes() picks one per process):
//   convert:   nib<S> above, an AND and an int->float conversion per W codes.
//   subnormal: the masked lane itself read as a float. A code c in bits 4S'..4S'+3 (S' = S & 3;
//              nibbles 4-7 come from one 16-bit shift per block) is the subnormal c * 2^(4S'-149),
//              and x was scaled by 2^(149 - T - 4S') when permuted, so every product is exactly
//              c * x * 2^-T, a normal number; T = ilogb(max|x_m|) + 25 keeps the scaled x finite and
//              the result is multiplied back by 2^T. Every product and rounding is the convert
//              path's times a power of two, so the two give the same bits (short of products
//              under 2^-100 max|x|, which underflow). One AND per W codes: 1.7-1.8x the FMAs per
//              second on Zen 1, 1.06-1.19x on Zen 3 (bench/decode_ceiling.cpp). Any value in
//              bits 0..23 reads linearly (bit 23 is the exponent's low bit, and 2^-126 = 2^23 *
//              2^-149: a float below 2^-125 is its bit pattern times 2^-149). INT8 uses that on
//              bytes after flipping their sign bits (u = q + 128): bytes 0-2 by one AND each,
//              byte 3 by a 24-bit shift alone;
//              y = s * (sum_k u_k x_k - 128 * sum_k x_k), an offset that costs about 2 bits.
//              Subnormal operands need MXCSR.DAZ clear: NoDaz clears it for the kernel's duration.
//   bf16 dot (INT4 with bf16 x, AVX-512 on a CPU with AVX512-BF16; bf16_dot() says): a block's
//              bytes read as 16-bit lanes, lane j holding codes 4j..4j+3; nibble S of every lane
//              becomes the bf16 1 + c/16 (a shift and one ternary-logic op, V::nib_bf16<S>), so a
//              32-bit lane l carries codes 8l + S and 8l + 4 + S, and vdpbf16ps multiplies both by
//              their x (bf16 as given, permuted to match) and adds them to an fp32 lane: two codes
//              per lane and op, where the paths above take one. Every product is exact; with the
//              scales folded as 16 s and the zero-points as z + 16,
//              y = sum_g 16 s_g (sum_k x_k (1 + c_k/16)) - s_g (z_g + 16) sum_k x_k.
//              For 2 to 8 rows of x: on Zen 4 (2 threads, 16 layers of 4096 x 4096 from memory)
//              1.09x, 1.24-1.29x and 1.32x the fp32 path at M = 2, 4 and 8, but at M = 1 0.99-1.02x
//              there and 0.93-0.94x at 1536 x 576 (bench/RESULTS.md, fourteenth session).
// Prefill (more rows): a blocked GEMM, qmatmul_prefill.h; on AMX tiles, qmatmul_amx.h; -a8:
// qmatmul_a8.h, qmatmul_dot_prefill.h, and past 8 rows on AMX tiles too (amx_a8_rows).
#pragma once
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif
#if defined(__AVX2__)
#include <immintrin.h>  // the -a8 kernel (qmatmul_a8.h)
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_dispatch.h"
#include "qmatmul_impl.h"

namespace pyquant {
namespace PQ_ISA_NS {

// ---- lane operations built from the traits ---------------------------------------------------
// float(lane & mask)
static inline typename V::F cvt_and(typename V::I v, uint32_t mask) { return V::cvt(V::band(v, mask)); }
// lane & mask, read as a float (a subnormal when the bits sit below the exponent)
static inline typename V::F bits(typename V::I v, uint32_t mask) { return V::asf(V::band(v, mask)); }
// Nibble S of every lane as a float: float((lane >> 4S) & 15) * 2^(4S) for S < 7 (masked in place);
// S = 7 is shifted down instead, so unscaled.
template <int S>
static inline typename V::F nib(typename V::I v) {
  if constexpr (S == 7) return V::cvt(V::template srl<28>(v));
  else return cvt_and(v, 15u << (4 * S));
}
// Lane l: the 4 bytes at p + l * stride (little-endian), one row per lane.
static inline typename V::I gather4(const uint8_t* p, int64_t stride) {
  alignas(64) uint32_t u[V::W];
  for (int l = 0; l < V::W; ++l) std::memcpy(&u[l], p + l * stride, 4);
  return V::loadi(reinterpret_cast<const uint8_t*>(u));
}

// ---- subnormal codes: helpers ---------------------------------------------------------------
// Clears MXCSR.DAZ (denormals-are-zero, which torch.set_flush_denormal(True) sets) on this
// thread while alive: subnormal codes would read as zero under it.
struct NoDaz {
#if defined(__x86_64__) || defined(__i386__)
  unsigned saved = _mm_getcsr();
  NoDaz() { _mm_setcsr(saved & ~0x40u); }
  ~NoDaz() { _mm_setcsr(saved); }
#endif
};

// ---- scalar conversions ------------------------------------------------------------------
static inline float bits_f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline uint32_t f_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// T of the subnormal path: x * 2^(149 - T) stays below 2^126 for the row's largest |x|. The
// maximum is taken over |x|'s bit patterns (ordered as the values are; a vectorized integer max):
// with a NaN or Inf in the row T is 25, and the row's outputs are NaN or Inf anyway.
static inline int subnormal_shift(const float* x, int64_t n) {
  uint32_t amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, f_bits(x[i]) & 0x7fffffffu);
  return (amax > 0 && amax < 0x7f800000u) ? std::ilogb(bits_f(amax)) + 25 : 25;
}

// sum of x[0..n) in double, four chains (the INT8 path's offset, 128 * sum x, must not cancel).
static inline double sum_double(const float* x, int64_t n) {
  double s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += x[i + j];
  for (; i < n; ++i) s[0] += x[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

static inline float bf16_to_f32(uint16_t h) { return bits_f(static_cast<uint32_t>(h) << 16); }
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(u >> 16);
}
static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // subnormal: m * 2^-24
    return sign ? -v : v;
  }
  if (e == 31) return bits_f(sign | 0x7f800000u | (m << 13));
  return bits_f(sign | ((e + 112u) << 23) | (m << 13));
}
static inline uint16_t f32_to_f16(float ff) {  // round to nearest even (F. Giesen's method)
  uint32_t f = f_bits(ff);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  uint16_t o;
  if (f >= (143u << 23)) {
    o = (f > (255u << 23)) ? 0x7e00 : 0x7c00;
  } else if (f < (113u << 23)) {
    const uint32_t magic = 126u << 23;
    o = static_cast<uint16_t>(f_bits(bits_f(f) + bits_f(magic)) - magic);
  } else {
    uint32_t odd = (f >> 13) & 1u;
    f += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    o = static_cast<uint16_t>(f >> 13);
  }
  return static_cast<uint16_t>(o | (sign >> 16));
}

static inline float load_one(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  }
}
static inline void load_row(const void* p, DType dt, int64_t n, float* out) {
  if (dt == DType::F32) { std::memcpy(out, p, n * sizeof(float)); return; }
  for (int64_t i = 0; i < n; ++i) out[i] = load_one(p, dt, i);
}
static inline void store_row(const float* in, DType dt, int64_t n, void* out) {
  if (dt == DType::F32) {
    if (n <= 4) {  // the decode tiles (store_y: one value): a few floats, copied without a memcpy call
      for (int64_t i = 0; i < n; ++i) static_cast<float*>(out)[i] = in[i];
    } else {
      std::memcpy(out, in, n * sizeof(float));
    }
    return;
  }
  auto* o = static_cast<uint16_t*>(out);
  if (dt == DType::BF16) for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(in[i]);
  else for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(in[i]);
}
static inline size_t dsize(DType dt) { return dt == DType::F32 ? 4 : 2; }
static inline const void* row_ptr(const void* base, DType dt, int64_t row, int64_t ld) {
  return static_cast<const char*>(base) + row * ld * dsize(dt);
}
static inline void* row_ptr(void* base, DType dt, int64_t row, int64_t ld) {
  return static_cast<char*>(base) + row * ld * dsize(dt);
}

// y[m, n] = v + bias[n] (+ 0 without one), in y's dtype: one value, stored as an INT4 decode tile
// finishes it. Collected in a small array and stored by store_row, a tile's 4 values were read
// back as one vector just after their 4 scalar stores, a load that waits for those stores to
// complete instead of taking their data (no store forwarding from several stores to one load):
// with the masked zero-point sums below, 1.05-1.16x at M = 1 on the demo model's shapes (AVX-512;
// bench/RESULTS.md, thirty-second session). The INT8 and -a8 tiles stored this way ran 0.92-0.96x
// at M = 2 and 4 and keep store_row.
static inline void store_y(const QmmArgs& a, int64_t m, int64_t n, float v) {
  v += a.bias ? load_one(a.bias, a.ydt, n) : 0.f;
  store_row(&v, a.ydt, 1, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n * dsize(a.ydt));
}

static inline int threads_for(const QmmArgs& a) { return a.nthreads > 0 ? a.nthreads : omp_get_max_threads(); }

// INT4 weight row n's zero-point in group g (ng groups a row): 8 for symmetric weights (no zeros).
static inline int32_t zero_point(const QmmArgs& a, int64_t n, int64_t ng, int64_t g) {
  return a.zeros ? a.zeros[n * ng + g] : 8;
}

// Scales of one weight row as fp32 (ng of them). fp16 ones W at a time (F16C: the scalar
// conversion made INT4-g128 decode with fp16 scales 0.85x the fp32-scale speed).
static inline void row_scales(const QmmArgs& a, int64_t n, int64_t ng, float* out) {
  if (a.sdt == DType::F32) {  // copied inline: memcpy calls of a few floats showed in profiles at K = 576
    const float* s = static_cast<const float*>(a.scales) + n * ng;
    int64_t g = 0;
    for (; g + V::W <= ng; g += V::W) V::store(out + g, V::load(s + g));
    for (; g < ng; ++g) out[g] = s[g];
  } else {
    const auto* s = static_cast<const uint16_t*>(a.scales) + n * ng;
    int64_t g = 0;
    for (; g + V::W <= ng; g += V::W) V::store(out + g, V::load_f16(s + g));
    for (; g < ng; ++g) out[g] = f16_to_f32(s[g]);
  }
}

// Calls f(m0, MC, Sub) for the activation rows m0..m0+MC-1, in chunks of MaxMC rows (the last
// one shorter), with MC and Sub (subnormal codes) as compile-time constants
// (std::integral_constant). The decode kernels' one dispatch.
template <int MaxMC, class Fn>
static inline void for_each_tile(int64_t M, bool sub, Fn&& f) {
  static_assert(MaxMC >= 1 && MaxMC <= 4, "tiles of 1 to 4 activation rows");
  for (int64_t m0 = 0; m0 < M; m0 += MaxMC) {
    const int64_t mc = std::min<int64_t>(MaxMC, M - m0);
    auto go = [&](auto MC) {
      if (sub) f(m0, MC, std::true_type{});
      else f(m0, MC, std::false_type{});
    };
    if (mc == 1) go(std::integral_constant<int, 1>{});
    if constexpr (MaxMC >= 2) if (mc == 2) go(std::integral_constant<int, 2>{});
    if constexpr (MaxMC >= 3) if (mc == 3) go(std::integral_constant<int, 3>{});
    if constexpr (MaxMC >= 4) if (mc == 4) go(std::integral_constant<int, 4>{});
  }
}

// ============================== decode: INT4 ==============================================
// Software prefetch distances in the decode kernels' weight streams. INT8 (rows of K bytes, a
// page each at K = 4096): each row's stream 16 KiB ahead (tuned on Zen 1), once a cache line, in
// both code paths (convert had none before the twenty-fourth session; adding it ran M = 1
// 1.13-1.15x torch's int8pack_mm where it had run 1.00-1.01x, 12 and 24 KiB as 16, 8 KiB 1.04x,
// on an Intel Xeon). INT4: a tile's rows
// are contiguous, so its bytes are prefetched in address order, R * 4W bytes per block, 8 KiB
// ahead: one sequential stream instead of R streams of half a page each (K = 4096); 1.06-1.14x
// the per-row prefetches on Zen 3, where 4 and 16 KiB ahead gave 0.85-0.89x and 1.04-1.07x
// (bench/RESULTS.md, ninth session). Into L2 (prefetcht1, __builtin_prefetch locality 2), not L1:
// on Zen 4 that ran INT4 M = 1 1.2-1.3x, INT8 1.14-1.23x, -a8 1.14x (AVX-512 and AVX2 builds
// alike; a likely reason: into L1, 8 KiB of codes ahead share a 32-48 KiB L1 with the 16 KiB x
// row). Into L2, 4, 12 and 16 KiB ahead were worse than 8 (bench/RESULTS.md, fourteenth session).
// The weight-only INT4 tiles at M <= 2 read faster since their loop was split by group layout
// (dec4_loop), and there 16 KiB ahead beats 8 on Zen 5, 48 layers of 4096 x 4096 from memory,
// AVX-512, in one process: M = 1 1.07-1.21x (fp32 x), 1.23x (bf16 x), g32 1.08x, M = 2 1.02x; but
// M = 3, 4 and 8 0.96-0.97x, the -a8 tile 0.95x, AVX2 M = 1 1.03x, the demo model's 1536 x 576
// 0.99-1.00x (bench/RESULTS.md, thirty-first session).
constexpr int64_t kPrefetchBytes = 16384;
constexpr int64_t kPrefetchTileBytes = 8192;
static inline int64_t int4_tile_lead(int64_t M) { return M <= 2 ? 16384 : kPrefetchTileBytes; }
constexpr int kPrefetchLocality = 2;

// A tile's share of its weight stream: bytes [p, p + n) of the block being read, prefetched
// kPrefetchTileBytes ahead into L2, a line at a time (the -a8 tile).
static inline void prefetch_tile_ahead(const uint8_t* p, int64_t n) {
  for (int64_t o = 0; o < n; o += 64) __builtin_prefetch(p + o + kPrefetchTileBytes, 0, kPrefetchLocality);
}

// One line into L2. On x86 an asm statement, which the compiler keeps where it stands among the
// block's steps (it gathered __builtin_prefetch calls at one end of the loop body).
static inline void prefetch_line(const uint8_t* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht1 %0" : : "m"(*reinterpret_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, kPrefetchLocality);
#endif
}

// The INT4 decode tiles' prefetch, spread over a block's NS steps: after step S, lines
// [S * NL / NS, (S + 1) * NL / NS) of the NL lines at p (the block's bytes int4_tile_lead(M)
// ahead). On an Intel Xeon the loop alone (bench/prefetch_probe.cpp, 2 threads, 2 GiB) streamed
// 19.9 GB/s with the lines issued together and 25.5 GB/s with one every other step; the kernel,
// with the chunks and the scale prefetch below, 1.06-1.08x INT4 M = 1 against 1.03x without the
// spread (bench/RESULTS.md, twenty-seventh session).
template <int S, int NS, int NL>
static inline __attribute__((always_inline)) void prefetch_step(const uint8_t* p) {
  for (int j = S * NL / NS; j < (S + 1) * NL / NS; ++j) prefetch_line(p + 64 * j);
}

// The most rows of x the decode kernels take; more go to the blocked prefill GEMM. 8, and 24 when
// K >= 1024: there the decode kernels, reading W once for all rows, beat the GEMM (which
// dequantizes W into fp32 panels) up to 24-32 rows (4096 x 4096 from memory, INT4 fp32 x: 1.66x
// at M = 9, 1.28x at 16, 1.08x at 24, 1.02x at 32; bf16 x and INT8 more), but at K = 576 only up
// to 9 (Zen 4, bench/RESULTS.md, sixteenth session).
constexpr int64_t kDecodeMaxM = 24;
static inline int64_t decode_max_m(int64_t K) { return K >= 1024 ? kDecodeMaxM : 8; }

struct Int4Plan {
  int64_t G, ng, ngp, Kp, nblocks;  // ngp: ng rounded up to W; nblocks full 8W-code blocks per row
  int64_t Kx;                        // Kp rounded up to 8W: x's padded length (the partial block's too)
  int tail;                          // bytes of a row's last, partial block (G < 8W only), else 0
  int gshift;                        // log2(G): group of code k is k >> gshift (no division in the loop)
  bool sub;                          // subnormal codes (see the top of this file)
  bool bf;                           // bf16 dot products (bf16 x; see the top of this file)
  AlignedVec<uint16_t> xb;           // [M][Kx] bf16 x, permuted for the dot products (bf only)
  AlignedVec<float> xr, xp, gsum;    // [M][Kx] raw (zero-padded), [M][Kx] permuted, [M][ngp] (zero-padded)
  std::vector<double> unscale;       // [M]: 2^T (subnormal) or 1, applied to the block sums
  bool in_place;                     // the tiles read fp32 scales where they lie, not from a copy
  int64_t lead;                      // bytes ahead of a block that the tiles prefetch (int4_tile_lead)
  int64_t ss;                        // the scales' row stride where the tiles read them: ng, or ngp in a copy
};

// The decode kernels' row tiles (4 weight rows each) shared between threads: thread t owns the
// t-th contiguous range of tiles and claims it front to back, 1/8 of a thread's tiles at a time
// (64 at N = 4096 on 2 threads; at least 1, and half what is left near the end), so its weight
// stream is one run and the prefetch ahead of each tile is its own next tile's; a thread done
// with its own range claims half of what is left at the back of another's, again and again, so
// a thread that the host delays does not hold up the call. A range's front and back share one
// atomic word (compare-and-swap). Against OpenMP's dynamic
// chunks (each chunk's first tile unprefetched, its last tile's prefetch spent on another
// thread's tiles), on an AMD EPYC (Zen 5), 2 threads: INT4 M = 1 4096 x 4096 from memory
// 1.02-1.13x (median 1.08x) when the host's memory ran fast and 1.00-1.04x when slow, -a8 and
// INT8 up to 1.10x, at the demo model's shapes 1.08-1.37x, and 1.05x with another process busy
// on one of the 2 cores (bench/RESULTS.md, twenty-eighth session; a static split, one range per
// thread and no stealing, ran 0.82x with a busy core on an Intel Xeon, twenty-seventh session).
// Every tile is claimed once whichever threads join (a thread that OpenMP does not start leaves
// its range to the others); the result does not depend on who ran a tile. Fewer than 2^32 tiles
// (the word's halves; qmatmul_cpu checks N).
class TileRanges {
 public:
  TileRanges(int64_t ntiles, int nthreads)
      : n_(std::max(nthreads, 1)), step_(std::max<int64_t>(ntiles / (8 * int64_t{n_}), 1)),
        r_(new Range[n_]) {
    for (int t = 0; t < n_; ++t)
      r_[t].fb.store(pack(ntiles * t / n_, ntiles * (t + 1) / n_), std::memory_order_relaxed);
  }
  // Calls f(tile) for every tile that thread t claims: its own range's, then others'.
  template <class F>
  void run(int t, F&& f) {
    int64_t lo, hi;
    while (claim(r_[t], true, lo, hi))
      for (int64_t i = lo; i < hi; ++i) f(i);
    for (int k = 1; k < n_; ++k)
      while (claim(r_[(t + k) % n_], false, lo, hi))
        for (int64_t i = lo; i < hi; ++i) f(i);
  }

 private:
  struct alignas(64) Range { std::atomic<uint64_t> fb; };  // back << 32 | front
  static uint64_t pack(int64_t front, int64_t back) { return uint64_t(back) << 32 | uint64_t(front); }
  bool claim(Range& r, bool own, int64_t& lo, int64_t& hi) const {
    uint64_t v = r.fb.load(std::memory_order_relaxed);
    for (;;) {
      const int64_t f = int64_t(v & 0xffffffffu), b = int64_t(v >> 32);
      if (f >= b) return false;
      const int64_t take = own ? std::min(step_, (b - f + 1) / 2) : std::max<int64_t>((b - f) / 2, 1);
      lo = own ? f : b - take;
      hi = own ? f + take : b;
      if (r.fb.compare_exchange_weak(v, own ? pack(hi, b) : pack(f, lo), std::memory_order_relaxed)) return true;
    }
  }
  int n_;
  int64_t step_;
  std::unique_ptr<Range[]> r_;
};

// How a weight's INT4 groups lie over the decode tiles' blocks of 8W codes a row; dec4_loop has a
// loop for each.
enum GroupLayout : int {
  kGroupsInBlock = 0,   // G < 8W: a vector of 8W / G scales per row, folded every block
  kGroupIsBlock = 1,    // G = 8W (g128 with AVX-512, g64 with AVX2): a scale per row, every block
  kGroupIs2Blocks = 2,  // G = 16W (g256 with AVX-512, g128 with AVX2): a scale every 2 blocks
  kGroupIsBlocks = 3,   // G > 16W (and every G with one lane): a scale every G / 8W blocks
};

// tot[r][m] += acc[r][m] * the scale(s) of row r from group g0: one per row when a group spans
// whole blocks (G >= 8W), else a per-lane vector. Two loops, not one with the case chosen per
// row: as one (with scale_block's stack array in it) GCC 12 kept acc and tot in memory, every
// block storing and reloading them; split, 1.46x at M = 4 and 1.06x at M = 1 (where memory sets
// the pace) on Zen 4, AVX-512.
template <int MC, int R, int Layout>
static inline __attribute__((always_inline)) void fold_scales(const float* s, int64_t ss, int64_t g0, int G,
                                                              const typename V::F (&acc)[R][MC],
                                                              typename V::F (&tot)[R][MC]) {
  typename V::F sv[R];
  if constexpr (Layout != kGroupsInBlock) {
    for (int r = 0; r < R; ++r) sv[r] = V::set1(s[r * ss + g0]);
  } else {
    for (int r = 0; r < R; ++r) sv[r] = V::scale_block(s + r * ss + g0, G / 8);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) tot[r][m] = V::fma(acc[r][m], sv[r], tot[r][m]);
}

// The INT4 decode tiles' loop: the per-(row, m) dot products of the codes with x over all of a
// row's blocks, times the group scales. The last block is partial when G < 8W and Kp is not a
// multiple of 8W (at K = 576, G = 32 or 64: 64 of the 576 codes); it is read by a masked load
// (a scalar loop there made 1536 x 576 run 2.6x slower than 1536 x 640 at M = 1 and 3.7x at M = 4
// on an Intel Xeon, twenty-sixth session). Per block, the R rows' 4W code bytes go to
// step(b, v, acc, pf), which adds the block's products to acc and prefetches the R * 4W bytes at
// pf (the next tile's, in address order; prefetch_step) between its steps; the scale is folded
// into tot once per group when a group spans whole blocks (G >= 8W), else once per block with a
// per-lane scale vector. One accumulator per (row, m) (4 or 8 FMA chains: the nibble decoding
// (AND, or AND + conversion), not the FMA latency, sets the pace; two chains per row measured
// 1.00-1.04x one on Zen 3, bench/decode_ceiling.cpp): with R = 4, v/acc/tot stay in registers
// (fold_scales says how). One loop per GroupLayout, its blocks per fold a constant where that is
// 1 or 2 and its totals copied out only at the end: against one loop for every layout (a block
// loop inside a group loop, whose totals GCC 12 stored to the stack at every fold), on Zen 5,
// in one process, same outputs: AVX-512 M = 1 4096 x 4096 g128 1.13-1.21x from L3 and
// 1.00-1.05x from memory, g32, g64 and g256 1.05-1.14x, M = 2 and 4 1.04-1.05x, M = 8 0.99x, bf16
// dot products at M = 4 1.18x, the demo model's shapes 1.05-1.07x; AVX2 g64 1.12x, g128 1.06x
// (bench/RESULTS.md, thirty-first session). VV: V (a template parameter so that
// dec4_tile_bf16's body is compiled only where it is called).
template <int MC, int R, class VV, class Step>
static inline __attribute__((always_inline)) void dec4_loop(const uint8_t* q, int64_t row_bytes,
                                                            const float* srow, const Int4Plan& p,
                                                            float out[R][MC], Step&& step) {
  using F = typename VV::F;
  using I = typename VV::I;
  constexpr int W = VV::W;
  const int G = static_cast<int>(p.G), gshift = p.gshift;
  F sum[R][MC];
  auto run = [&](auto layout) __attribute__((always_inline)) {
    constexpr int L = decltype(layout)::value;
    const int64_t bpg = L == kGroupIsBlocks ? G / (8 * W) : L == kGroupIs2Blocks ? 2 : 1;  // blocks per fold
    F tot[R][MC];
    for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) tot[r][m] = VV::zero();
    auto block = [&](int64_t b, F (&acc)[R][MC]) __attribute__((always_inline)) {
      I v[R];
      for (int r = 0; r < R; ++r) v[r] = VV::loadi(q + r * row_bytes + b * 4 * W);
      step(b, v, acc, q + b * R * 4 * W + p.lead);  // prefetching from memory as it goes
    };
    for (int64_t b0 = 0; b0 < p.nblocks; b0 += bpg) {  // (nblocks is a multiple of bpg)
      F acc[R][MC];
      for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) acc[r][m] = VV::zero();
      if constexpr (L == kGroupIsBlocks) {
        for (int64_t b = b0; b < b0 + bpg; ++b) block(b, acc);
      } else {
        block(b0, acc);
        if constexpr (L == kGroupIs2Blocks) block(b0 + 1, acc);
      }
      fold_scales<MC, R, L>(srow, p.ss, L == kGroupIsBlock ? b0 : (b0 * 8 * W) >> gshift, G, acc, tot);
    }
    if constexpr (W > 1 && L == kGroupsInBlock)
      if (p.tail) {  // the partial block: its codes, zeros past them, and x is zero there
        F acc[R][MC];
        for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) acc[r][m] = VV::zero();
        I v[R];
        for (int r = 0; r < R; ++r) v[r] = VV::loadi_head(q + r * row_bytes + p.nblocks * 4 * W, p.tail);
        step(p.nblocks, v, acc, q);  // (prefetches lines already read)
        fold_scales<MC, R, L>(srow, p.ss, (p.nblocks * 8 * W) >> gshift, G, acc, tot);
      }
    for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) sum[r][m] = tot[r][m];
  };
  if (G < 8 * W) run(std::integral_constant<int, kGroupsInBlock>{});
  else if (G == 8 * W) run(std::integral_constant<int, kGroupIsBlock>{});
  else if (G == 16 * W) run(std::integral_constant<int, kGroupIs2Blocks>{});
  else run(std::integral_constant<int, kGroupIsBlocks>{});
  for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) out[r][m] = VV::hsum(sum[r][m]);
}

// dec4_loop with fp32 x (xp[m]: x row m permuted, see decode_int4): eight steps of one code a
// lane. Never inlined: inlined into the parallel region (GCC 12 does when fewer tile shapes are
// instantiated) it ran 0.94-0.98x at M = 1 (Zen 3), its registers shared with the caller's state.
template <int MC, int R, bool Sub>
__attribute__((noinline)) static void dec4_tile(const float* const* xp, const uint8_t* q, int64_t row_bytes,
                                                const float* srow, const Int4Plan& p, float out[R][MC]) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::W;
  constexpr int NL = W > 1 ? R * 4 * W / 64 : 0;  // lines a block
  dec4_loop<MC, R, V>(q, row_bytes, srow, p, out, [&](int64_t b, I (&v)[R], F (&acc)[R][MC], const uint8_t* pf)
                      __attribute__((always_inline)) {
    const int64_t k0 = b * 8 * W;
#define PQ_NIB_STEP(S)                                                             \
    {                                                                              \
      F xs[MC];                                                                    \
      for (int m = 0; m < MC; ++m) xs[m] = V::load(xp[m] + k0 + (S) * W);          \
      for (int r = 0; r < R; ++r) {                                                \
        F c = Sub ? bits(v[r], 15u << (4 * ((S) & 3))) : nib<S>(v[r]);            \
        for (int m = 0; m < MC; ++m) acc[r][m] = V::fma(c, xs[m], acc[r][m]);      \
      }                                                                            \
      prefetch_step<S, 8, NL>(pf);                                                 \
    }
    PQ_NIB_STEP(0) PQ_NIB_STEP(1) PQ_NIB_STEP(2) PQ_NIB_STEP(3)
    if constexpr (Sub)  // nibbles 4-7 to the low half (in place: fewer live registers)
      for (int r = 0; r < R; ++r) v[r] = V::template srl<16>(v[r]);
    PQ_NIB_STEP(4) PQ_NIB_STEP(5) PQ_NIB_STEP(6) PQ_NIB_STEP(7)
#undef PQ_NIB_STEP
  });
}

// dec4_loop with bf16 dot products (see the top of this file): xb[m] is x row m in bf16,
// permuted; four steps of two codes a lane (bf16 pairs, x as bf16 pairs).
template <int MC, int R, class VV = V>
__attribute__((noinline)) static void dec4_tile_bf16(const uint16_t* const* xb, const uint8_t* q, int64_t row_bytes,
                                                     const float* srow, const Int4Plan& p, float out[R][MC]) {
  using F = typename VV::F;
  using I = typename VV::I;
  constexpr int W = VV::W;
  constexpr int NL = R * 4 * W / 64;  // lines a block
  dec4_loop<MC, R, VV>(q, row_bytes, srow, p, out, [&](int64_t b, I (&v)[R], F (&acc)[R][MC], const uint8_t* pf)
                       __attribute__((always_inline)) {
#define PQ_BF16_STEP(S)                                                                            \
    {                                                                                              \
      I xs[MC];                                                                                    \
      for (int m = 0; m < MC; ++m)                                                                 \
        xs[m] = VV::loadi(reinterpret_cast<const uint8_t*>(xb[m] + b * 8 * W + (S) * 2 * W));      \
      for (int r = 0; r < R; ++r) {                                                                \
        const I c = VV::template nib_bf16<S>(v[r]);                                                \
        for (int m = 0; m < MC; ++m) acc[r][m] = VV::dot_bf16(acc[r][m], c, xs[m]);               \
      }                                                                                            \
      prefetch_step<S, 4, NL>(pf);                                                                 \
    }
    PQ_BF16_STEP(0) PQ_BF16_STEP(1) PQ_BF16_STEP(2) PQ_BF16_STEP(3)
#undef PQ_BF16_STEP
  });
}

// Row n's scales as fp32 into s[0..ng), and s_g * z_g (s_g * 8 when symmetric) into sz[0..ng)
// for zero_term; the callers' buffers are zero-padded to ngp and keep their padding. bf16: the
// codes are read as 1 + c/16 (the bf16 dot products), so 16 s_g and s_g * (z_g + 16) instead.
static inline void row_scales_zeros(const QmmArgs& a, int64_t n, int64_t ng, float* s, float* sz, bool bf16 = false) {
  row_scales(a, n, ng, s);
  const uint8_t* z = a.zeros ? a.zeros + n * ng : nullptr;
  const float off = bf16 ? 16.f : 0.f;
  int64_t g = 0;
  for (; g + V::W <= ng; g += V::W) {
    const typename V::F sv = V::load(s + g);
    V::store(sz + g, V::fma(sv, V::add(z ? V::load_u8(z + g) : V::set1(8.f), V::set1(off)), V::zero()));
    if (bf16) V::store(s + g, V::fma(sv, V::set1(16.f), V::zero()));
  }
  for (; g < ng; ++g) {
    sz[g] = s[g] * ((z ? static_cast<float>(z[g]) : 8.f) + off);
    if (bf16) s[g] *= 16.f;
  }
}

// Rows n..n+nr-1's scales and zero-points (ng each) into L2: the next tile's, prefetched while this
// one runs, as its codes are (row_scales_zeros reads them). Every line the bytes touch, from the
// line holding the first (a tile's scales need not start on a line: fp16, or ng not a multiple of 16).
static inline void prefetch_scales_zeros(const QmmArgs& a, int64_t n, int64_t nr, int64_t ng) {
  auto lines = [](const uint8_t* p, int64_t nbytes) {  // by address: the first line may start before p
    const uintptr_t end = reinterpret_cast<uintptr_t>(p) + nbytes;
    for (uintptr_t u = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63}; u < end; u += 64)
      prefetch_line(reinterpret_cast<const uint8_t*>(u));
  };
  const int64_t ss = a.sdt == DType::F32 ? 4 : 2;
  lines(static_cast<const uint8_t*>(a.scales) + n * ng * ss, nr * ng * ss);
  if (a.zeros) lines(a.zeros + n * ng, nr * ng);
}

// Whether the INT4 decode tiles prefetch the next tile's scales and zero-points: where a tile's
// codes span the codes' own prefetch lead (K >= 4096), not in shorter tiles, which end before
// a line from memory would arrive. With the scales read in place, M = 1, from memory (Zen 5, slow
// state), with the prefetch against without: 4096 x 4096 INT4 1.00-1.01x, -a8 1.02-1.08x; 1536 x
// 576 0.97-0.98x both, 0.93-0.96x from L3 (bench/RESULTS.md, thirtieth session).
static inline bool scales_worth_prefetching(int64_t row_bytes) { return 4 * row_bytes >= kPrefetchTileBytes; }

// sum_g s_g * z_g * gsum_g: the zero-points' share of one row's result, over arrays zero-padded
// to ngp (a multiple of W: no scalar tail; with G = 32 a row has K/32 groups, as many as a tenth
// of its FMAs, and at K = 576, G = 128 five, as costly as the tile's epilogue).
static inline float zero_term(const float* sz, const float* gsum, int64_t ngp) {
  typename V::F acc = V::zero();
  for (int64_t g = 0; g < ngp; g += V::W) acc = V::fma(V::load(sz + g), V::load(gsum + g), acc);
  return V::hsum(acc);
}

// The same from one row's fp32 scales s and zero-points z (8 each when null), ng of each, with no
// s * z array in between: each s_g * z_g rounded as row_scales_zeros rounds it, and summed as
// zero_term above sums it (the same bits). The groups past the last multiple of W by masked
// loads (gsum's zero padding meets their zeros): zero-padded copies of that last partial vector,
// stored and read back per row, ran the demo model's 1536 x 576 at 0.64x the copy path (thirtieth
// session); summed one by one, 0.93-0.99x this at M = 1 on its shapes (thirty-second session).
static inline float zero_term(const float* s, const uint8_t* z, int64_t ng, const float* gsum) {
  using F = typename V::F;
  F acc = V::zero();
  int64_t g = 0;
  for (; g + V::W <= ng; g += V::W) {
    const F sz = V::fma(V::load(s + g), z ? V::load_u8(z + g) : V::set1(8.f), V::zero());
    acc = V::fma(sz, V::load(gsum + g), acc);
  }
  if constexpr (V::W > 1)
    if (g < ng) {
      const int n = static_cast<int>(ng - g);
      const F sz = V::fma(V::load_head(s + g, n), z ? V::load_u8_head(z + g, n) : V::set1(8.f), V::zero());
      acc = V::fma(sz, V::load(gsum + g), acc);
    }
  return V::hsum(acc);
}

// Row n's zero-point term against gsum, as the INT4 decode kernels read its scales: in place (see
// scales_in_place) from its fp32 scales s and its zero-points where they lie, else from the
// per-tile copy's s * z (sz, zero-padded to ngp).
static inline float row_zero_term(const QmmArgs& a, int64_t n, int64_t ng, int64_t ngp, bool in_place,
                                  const float* s, const float* sz, const float* gsum) {
  return in_place ? zero_term(s, a.zeros ? a.zeros + n * ng : nullptr, ng, gsum) : zero_term(sz, gsum, ngp);
}

// Whether the INT4 decode tiles read a weight's scales where they lie (fp32 ones), with
// zero_term(s, z, ng, gsum), instead of from a per-tile copy. Only where nothing reads past a
// row's scales: a partial last block reads scale_block's full vector of groups (in a copy, its
// zero padding; in place, the next row's scales, where an Inf would spoil this row). With a
// partial vector of groups (ng not a multiple of W) it ran only at M = 1 while zero_term summed
// those groups one by one for every row of x; with masked loads, in place against the copy:
// the demo model's 576 x 576 and 1536 x 576 1.10-1.15x at M = 2, 1.04x at M = 4, 1.02x at
// M = 8 (576 x 1536; bench/RESULTS.md, thirty-second session).
static inline bool scales_in_place(const QmmArgs& a, bool partial_last_block) {
  return a.sdt == DType::F32 && !partial_last_block;
}

// How a decode tile reads INT4 codes (see the top of this file).
enum Codes : int { kConvert = 0, kSubnormal = 1, kBf16Dot = 2 };

template <int MC, int R, int C>
static void dec4_rows(const QmmArgs& a, const Int4Plan& p, int64_t m0, int64_t n, const float* sbuf) {
  // y[m0 + m, n + r] (m < MC, r < R) receives the finished values. sbuf (unless p.in_place): row
  // r's scales at r * ngp, its s * z at (4 + r) * ngp (with C = kBf16Dot: 16 s and s * (z + 16)).
  const int64_t row_bytes = p.Kp / 2;
  const auto* q = static_cast<const uint8_t*>(a.qw) + n * row_bytes;
  const float* srow = p.in_place ? static_cast<const float*>(a.scales) + n * p.ng : sbuf;
  float out[R][MC];
  if constexpr (C == kBf16Dot) {
    const uint16_t* xb[MC];
    for (int m = 0; m < MC; ++m) xb[m] = p.xb.data() + (m0 + m) * p.Kx;
    dec4_tile_bf16<MC, R>(xb, q, row_bytes, srow, p, out);
  } else {
    const float* xp[MC];
    for (int m = 0; m < MC; ++m) xp[m] = p.xp.data() + (m0 + m) * p.Kx;
    dec4_tile<MC, R, C == kSubnormal>(xp, q, row_bytes, srow, p, out);
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) {
      const float zt = row_zero_term(a, n + r, p.ng, p.ngp, p.in_place, srow + r * p.ss, sbuf + (4 + r) * p.ngp,
                                     p.gsum.data() + (m0 + m) * p.ngp);
      store_y(a, m0 + m, n + r, static_cast<float>(out[r][m] * p.unscale[m0 + m]) - zt);
    }
}

template <int MC, int C>
static void dec4_block(const QmmArgs& a, const Int4Plan& p, int64_t m0, int64_t n0, int64_t nr, const float* sbuf) {
  // Tiles of R = 4 weight rows and MC <= 2 activation rows (8 accumulators); larger M runs as
  // several passes over the same 4 weight rows, the later ones reading them from L1. The MC = 4,
  // R = 2 tile used before has 8 accumulators too, but GCC 12 gives each of its FMAs its x vector
  // as a memory operand (8 loads per 8 FMAs, against 2 here), and 4 x rows (64 KiB at K = 4096)
  // do not fit L1: 2-row passes were 1.18-1.40x it at M = 4 and 1.02-1.19x at M = 5, 6, 8; M = 3
  // (a 2-row and a 1-row pass instead of one 3 x 4 tile) 0.97-1.01x (Zen 3, bench/decode_ab.sh;
  // bench/RESULTS.md, tenth session).
  constexpr int R = 4;
  int64_t r = 0;
  for (; r + R <= nr; r += R) dec4_rows<MC, R, C>(a, p, m0, n0 + r, sbuf + r * p.ngp);
  for (; r < nr; ++r) dec4_rows<MC, 1, C>(a, p, m0, n0 + r, sbuf + r * p.ngp);
}

static void decode_int4(const QmmArgs& a) {
  constexpr int W = V::W;
  // Scratch reused between calls (no allocation per call). Through a reference: inside the
  // parallel region the name of a thread_local would be each thread's own (empty) one.
  static thread_local Int4Plan scratch;
  Int4Plan& p = scratch;
  p.G = a.group;
  p.ng = (a.K + p.G - 1) / p.G;
  p.ngp = (p.ng + W - 1) / W * W;
  p.Kp = p.ng * p.G;
  p.nblocks = p.Kp / (8 * W);
  p.Kx = (p.Kp + 8 * W - 1) / (8 * W) * (8 * W);
  p.tail = static_cast<int>(p.Kp - p.nblocks * 8 * W) / 2;  // a multiple of G / 2 >= 16 bytes
  p.gshift = 0;
  while ((int64_t{1} << p.gshift) < p.G) ++p.gshift;
  p.bf = V::kBf16Dot && a.xdt == DType::BF16 && a.M >= 2 && bf16_dot();
  p.sub = !p.bf && subnormal_codes();
  p.in_place = !p.bf && scales_in_place(a, p.tail != 0);  // (bf: the copy holds 16 s)
  p.ss = p.in_place ? p.ng : p.ngp;
  p.lead = int4_tile_lead(a.M);
  const int64_t M = a.M, Kx = p.Kx;
  p.xr.assign(M * Kx, 0.f);
  p.xp.resize(p.bf ? 0 : M * Kx);
  p.xb.resize(p.bf ? M * Kx : 0);
  p.gsum.assign(M * p.ngp, 0.f);
  p.unscale.assign(M, 1.0);
  for (int64_t m = 0; m < M; ++m) {
    float* xr = p.xr.data() + m * Kx;
    float* xp = p.xp.data() + m * Kx;
    load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, a.K, xr);
    for (int64_t g = 0; g < p.ng; ++g) {  // G is a multiple of W; xr is zero past K
      typename V::F acc = V::zero();
      for (int64_t k = g * p.G; k < (g + 1) * p.G; k += W) acc = V::add(acc, V::load(xr + k));
      p.gsum[m * p.ngp + g] = V::hsum(acc);
    }
    if (p.bf) {  // 16-bit lane 2l + h of block b, step S meets code b*8W + 8l + 4h + S: bf16 x as given
      const auto* xs = static_cast<const uint16_t*>(row_ptr(a.x, a.xdt, m, a.ldx));
      uint16_t* xb = p.xb.data() + m * Kx;
      for (int64_t b = 0; b < Kx / (8 * W); ++b)
        for (int S = 0; S < 4; ++S)
          for (int l = 0; l < W; ++l)
            for (int h = 0; h < 2; ++h) {
              const int64_t k = b * 8 * W + 8 * l + 4 * h + S;
              xb[b * 8 * W + S * 2 * W + 2 * l + h] = k < a.K ? xs[k] : 0;
            }
      continue;
    }
    // Block b, lane l, nibble S holds code b*8W + 8l + S; it meets xp[b*8W + S*W + l], scaled
    // by the inverse of what the code's float carries (2^4S, or 2^(4S'-149-T) when subnormal).
    const int T = p.sub ? subnormal_shift(xr, a.K) : 0;
    if (p.sub) p.unscale[m] = std::ldexp(1.0, T);
    double mul[8];
    for (int S = 0; S < 8; ++S) mul[S] = std::ldexp(1.0, p.sub ? 149 - T - 4 * (S & 3) : S == 7 ? 0 : -4 * S);
    for (int64_t b = 0; b < Kx / (8 * W); ++b)
      for (int S = 0; S < 8; ++S)
        for (int l = 0; l < W; ++l)
          xp[b * 8 * W + S * W + l] = static_cast<float>(xr[b * 8 * W + 8 * l + S] * mul[S]);
  }
  const int64_t N = a.N, nblk = (N + 3) / 4;
  const bool prefetch_scales = scales_worth_prefetching(p.Kp / 2);
  const int nt = threads_for(a);
  TileRanges ranges(nblk, nt);
#pragma omp parallel num_threads(nt)
  {
    NoDaz no_daz;
    static thread_local std::vector<float> sbuf;  // this thread's own
    sbuf.assign(8 * p.ngp, 0.f);  // 4 rows' scales, then their s * z; zero padding to ngp
    ranges.run(omp_get_thread_num(), [&](int64_t bi) {
      const int64_t n0 = bi * 4, nr = std::min<int64_t>(4, N - n0);
      if (n0 + 4 < N && prefetch_scales) prefetch_scales_zeros(a, n0 + 4, std::min<int64_t>(4, N - n0 - 4), p.ng);
      if (!p.in_place)  // (in place: the tiles read the scales, dec4_rows the zero-points, where they lie)
        for (int64_t r = 0; r < nr; ++r)
          row_scales_zeros(a, n0 + r, p.ng, sbuf.data() + r * p.ngp, sbuf.data() + (4 + r) * p.ngp, p.bf);
      for_each_tile<2>(M, p.sub, [&](int64_t m0, auto MC, auto Sub) {
        constexpr int mc = decltype(MC)::value;
        if constexpr (V::kBf16Dot)
          if (p.bf) return dec4_block<mc, kBf16Dot>(a, p, m0, n0, nr, sbuf.data());
        dec4_block<mc, decltype(Sub)::value ? kSubnormal : kConvert>(a, p, m0, n0, nr, sbuf.data());
      });
    });
  }
}

// ============================== decode: INT8 ==============================================
struct Int8Plan {
  int64_t K, kt;                 // kt: codes covered by full blocks (4W codes, subnormal) or pairs of W
  bool sub;                      // subnormal codes (see the top of this file)
  AlignedVec<float> xr, xp;      // [M][K] raw; [M][kt] permuted and scaled (subnormal only)
  std::vector<double> unscale, offset;  // [M]: 2^T and 128 * sum_{k<kt} x_k (subnormal), else 1 and 0
};

// Per-(row, m) dot products of the codes with x over k < kt (two FMA chains each when MC * R <= 4).
// Convert: W codes per load, sign-extended and converted. Subnormal: a 4W-byte block, lane l
// holds codes 4l..4l+3; after flipping sign bits, byte j < 3 is one AND away from a tiny float
// u * 2^(8j-149) and byte 3 one 24-bit shift away from u * 2^-149, met by xp[block + jW + l].
template <int MC, int R, bool Sub>
static inline void dec8_tile(const Int8Plan& p, int64_t m0, const int8_t* q, float out[R][MC]) {
  using F = typename V::F;
  using I = typename V::I;
  constexpr int W = V::W;
  const int64_t K = p.K;
  // Two FMA chains per (row, m) when MC * R <= 4 (8 accumulators at MC = 1, R = 4); one in the
  // larger tiles, where two need 16 accumulators and spill: 1.09-1.29x two at M = 2..8 (Zen 3).
  constexpr bool Two = MC * R <= 4;
  F acc0[R][MC], acc1s[R][MC];
  F (&acc1)[R][MC] = Two ? acc1s : acc0;
  for (int r = 0; r < R; ++r) for (int m = 0; m < MC; ++m) { acc0[r][m] = V::zero(); acc1s[r][m] = V::zero(); }
  if constexpr (Sub) {
    const float* xp[MC];
    for (int m = 0; m < MC; ++m) xp[m] = p.xp.data() + (m0 + m) * p.kt;
    for (int64_t k = 0; k < p.kt; k += 4 * W) {
      I u[R];
      for (int r = 0; r < R; ++r) {
        u[r] = V::flip_bytes(V::loadi(reinterpret_cast<const uint8_t*>(q + r * K + k)));
        if constexpr (W > 1) __builtin_prefetch(q + r * K + k + kPrefetchBytes, 0, kPrefetchLocality);
      }
      for (int j = 0; j < 4; j += 2) {
        F x0[MC], x1[MC];
        for (int m = 0; m < MC; ++m) { x0[m] = V::load(xp[m] + k + j * W); x1[m] = V::load(xp[m] + k + (j + 1) * W); }
        for (int r = 0; r < R; ++r) {
          F c0 = bits(u[r], j == 0 ? 0xFFu : 0xFF0000u);
          F c1 = j == 0 ? bits(u[r], 0xFF00u) : V::asf(V::template srl<24>(u[r]));
          for (int m = 0; m < MC; ++m) { acc0[r][m] = V::fma(c0, x0[m], acc0[r][m]); acc1[r][m] = V::fma(c1, x1[m], acc1[r][m]); }
        }
      }
    }
  } else {
    const float* x[MC];
    for (int m = 0; m < MC; ++m) x[m] = p.xr.data() + (m0 + m) * K;
    for (int64_t k = 0; k < p.kt; k += 2 * W) {
      F x0[MC], x1[MC];
      for (int m = 0; m < MC; ++m) { x0[m] = V::load(x[m] + k); x1[m] = V::load(x[m] + k + W); }
      for (int r = 0; r < R; ++r) {
        if constexpr (W > 1)
          if ((k & 63) == 0) __builtin_prefetch(q + r * K + k + kPrefetchBytes, 0, kPrefetchLocality);  // once a line
        F c0 = V::load_i8(q + r * K + k), c1 = V::load_i8(q + r * K + k + W);
        for (int m = 0; m < MC; ++m) { acc0[r][m] = V::fma(c0, x0[m], acc0[r][m]); acc1[r][m] = V::fma(c1, x1[m], acc1[r][m]); }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int m = 0; m < MC; ++m) {
      const float* xr = p.xr.data() + (m0 + m) * K;
      float v = static_cast<float>(V::hsum(Two ? V::add(acc0[r][m], acc1s[r][m]) : acc0[r][m]) * p.unscale[m0 + m] - p.offset[m0 + m]);
      for (int64_t k = p.kt; k < K; ++k) v += static_cast<float>(q[r * K + k]) * xr[k];  // scalar tail
      out[r][m] = v;
    }
}

template <int MC, bool Sub>
static void dec8_block(const Int8Plan& p, const int8_t* qw, int64_t m0, int64_t n0, int64_t nr, float* yacc) {
  constexpr int R = MC <= 2 ? 4 : 2;
  const int8_t* q = qw + n0 * p.K;
  int64_t r = 0;
  for (; r + R <= nr; r += R) {
    float out[R][MC];
    dec8_tile<MC, R, Sub>(p, m0, q + r * p.K, out);
    for (int m = 0; m < MC; ++m) for (int j = 0; j < R; ++j) yacc[m * 4 + r + j] = out[j][m];
  }
  for (; r < nr; ++r) {
    float out[1][MC];
    dec8_tile<MC, 1, Sub>(p, m0, q + r * p.K, out);
    for (int m = 0; m < MC; ++m) yacc[m * 4 + r] = out[0][m];
  }
}

static void decode_int8(const QmmArgs& a) {
  constexpr int W = V::W;
  const int64_t M = a.M, K = a.K, N = a.N, nblk = (N + 3) / 4;
  static thread_local Int8Plan scratch;  // reused between calls; a reference, as in decode_int4
  Int8Plan& p = scratch;
  p.K = K;
  p.sub = subnormal_codes();
  p.kt = p.sub ? K / (4 * W) * (4 * W) : K / (2 * W) * (2 * W);
  p.xr.resize(M * K);
  p.xp.resize(p.sub ? M * p.kt : 0);
  p.unscale.assign(M, 1.0);
  p.offset.assign(M, 0.0);
  for (int64_t m = 0; m < M; ++m) {
    float* xr = p.xr.data() + m * K;
    load_row(row_ptr(a.x, a.xdt, m, a.ldx), a.xdt, K, xr);
    if (!p.sub) continue;
    const int T = subnormal_shift(xr, K);
    p.unscale[m] = std::ldexp(1.0, T);
    p.offset[m] = 128.0 * sum_double(xr, p.kt);
    const double mul[4] = {std::ldexp(1.0, 149 - T), std::ldexp(1.0, 141 - T), std::ldexp(1.0, 133 - T),
                           std::ldexp(1.0, 149 - T)};  // byte j's float carries 2^(8j-149), byte 3 2^-149
    float* xp = p.xp.data() + m * p.kt;
    for (int64_t b = 0; b < p.kt; b += 4 * W)
      for (int j = 0; j < 4; ++j)
        for (int l = 0; l < W; ++l) xp[b + j * W + l] = static_cast<float>(xr[b + 4 * l + j] * mul[j]);
  }
  const auto* qw = static_cast<const int8_t*>(a.qw);
  const int nt = threads_for(a);
  TileRanges ranges(nblk, nt);
#pragma omp parallel num_threads(nt)
  {
    NoDaz no_daz;
    float yrow[kDecodeMaxM * 4];
    ranges.run(omp_get_thread_num(), [&](int64_t bi) {
      const int64_t n0 = bi * 4, nr = std::min<int64_t>(4, N - n0);
      for_each_tile<4>(M, p.sub, [&](int64_t m0, auto MC, auto Sub) {
        dec8_block<decltype(MC)::value, decltype(Sub)::value>(p, qw, m0, n0, nr, yrow + m0 * 4);
      });
      float s[4];
      for (int64_t r = 0; r < nr; ++r) row_scales(a, n0 + r, 1, s + r);  // int8: one scale per row
      for (int64_t m = 0; m < M; ++m) {
        float vals[4];
        for (int64_t r = 0; r < nr; ++r)
          vals[r] = yrow[m * 4 + r] * s[r] + (a.bias ? load_one(a.bias, a.ydt, n0 + r) : 0.f);
        store_row(vals, a.ydt, nr, static_cast<char*>(row_ptr(a.y, a.ydt, m, a.ldy)) + n0 * dsize(a.ydt));
      }
    });
  }
}

#include "qmatmul_prefill.h"
#include "qmatmul_a8.h"
#include "qmatmul_dot_prefill.h"
#include "qmatmul_amx.h"

// -a8 as integer dot products where this build and CPU have AVX512-VNNI (INT8 weights at
// decode sizes, or the GEMM for more rows); false: not run here.
template <class VV = V>
static bool vnni_a8(const QmmArgs& a) {
  if constexpr (VV::kVnni) {
    if (!vnni_dot()) return false;
    if (a.bits == 8 && a.M <= a8_int8_max_m(a.K) && a.K < (int64_t{1} << 20)) {
      decode_int8_a8<VV>(a);
      return true;
    }
    if (a.M > 8) {
      prefill_dot<false, VV>(a);
      return true;
    }
  }
  return false;
}

// Prefill on AMX tiles, where this build and CPU have them (and the AMX switch is on): weight-only
// on tdpbf16ps, -a8 on tdpbssd; false: not run here.
template <class VV = V>
static bool amx_gemm(const QmmArgs& a) {
  if constexpr (VV::kAmx) {
    // -a8 INT8 sums all of K in s32: |sum| <= 127 * 127 * K < 2^31 needs K < 133000
    if (amx() && !(a.act_bits == 8 && a.bits == 8 && a.K >= (int64_t{1} << 17))) {
      if (a.act_bits == 8) amx_prefill<VV, true>(a);
      else amx_prefill<VV, false>(a);
      return true;
    }
  }
  return false;
}

// Weight-only prefill with bf16 x on AVX512-BF16 dot products, where this build and CPU have them
// (and the bf16-dot and bf16-GEMM switches are on); false: not run here.
template <class VV = V>
static bool bf16_prefill(const QmmArgs& a) {
  if constexpr (VV::kBf16Dot) {
    if (a.xdt == DType::BF16 && bf16_gemm()) {
      prefill_dot<true, VV>(a);
      return true;
    }
  }
  return false;
}

// The most rows the weight-only decode kernels take: decode_max_m(K), at K >= 1024 no more than
// wide_decode_rows() (24 on AMD CPUs, 12 elsewhere: cpu_features.cpp), and fewer for bf16 x on
// CPUs with AVX512-BF16. Where the bf16 GEMM runs (bf16_gemm(), AMD), it beat them at 4096 x 4096
// from 13 rows for INT4 (0.99x at 12, 1.08x at 16, 1.28x at 24) and from 9 for INT8 (1.02x at 9,
// 1.16x at 12; Zen 4, bench/RESULTS.md, seventeenth session). Where it does not (an Intel Xeon),
// the fp32 GEMM on bf16 x beat them from 13 rows for both (INT4 1.18x at 16, 1.38x at 24; INT8
// 1.07x at 16, 1.22x at 24), and the decode kernels the fp32 GEMM up to 12 (twenty-third session).
// Where the AMX GEMM runs (amx()), it beat them (4096 x 4096, from memory) from 6 rows with INT4
// (fp32 x 0.99x at 5, 1.07x at 6; bf16 x 1.04x at 5, 1.15x at 6), with INT8 past 8 rows for fp32 x
// (0.95x at 8, 1.17x at 10) and from 7 for bf16 x (0.95x at 6, 1.09x at 7; twenty-fourth session).
template <class VV = V>
static int64_t decode_rows(const QmmArgs& a) {
  const int64_t m = std::min(decode_max_m(a.K), wide_decode_rows());  // wide_decode_rows() >= 12 > 8
  if constexpr (VV::kAmx)
    if (amx()) return std::min<int64_t>(m, a.bits == 4 ? 5 : a.xdt != DType::BF16 ? 8 : 6);
  if constexpr (VV::kBf16Dot)
    if (a.xdt == DType::BF16 && bf16_dot()) return std::min<int64_t>(m, a.bits == 8 && bf16_gemm() ? 8 : 12);
  return m;
}

// The most rows of x the -a8 kernels before it keep where the AMX GEMM runs. From memory, AMX against
// them: at 4096 x 4096 INT4 G = 128 0.95-1.01x at 8 rows, 1.08-1.13x at 9; G = 64 0.92x at 8, 1.00x at
// 9, 1.24x at 12; INT8 0.92-0.99x at 8, 1.07-1.09x at 9; at 1536 x 1536 INT4 0.99x at 8, 1.09x at 9,
// INT8 (whose decode kernel takes 12 rows there) 0.99-1.02x at 12, 1.17x at 16; at 576 x 576
// 0.98-1.00x from 8 to 12 rows. Groups of 32 (half tiles, and a scaling pass every 32 codes) lose
// longer: 0.64x at 8, 0.80-0.86x at 24 and 32 (against the VNNI GEMM), 0.95x at 48 and 56, 1.01-1.06x
// at 64 (1536 x 1536: 1.09x), 1.14x at 128 (twenty-fifth session).
static int64_t amx_a8_rows(const QmmArgs& a) {
  if (a.bits == 4) return a.group == 32 ? 56 : 8;
  return a.K < 4096 ? a8_int8_max_m(a.K) : 8;
}

void qmatmul_run(const QmmArgs& a) {
  if (a.act_bits == 8) {
    if (a.M > amx_a8_rows(a) && amx_gemm(a)) return;
    if (a.bits == 4 && a.M <= std::min(decode_max_m(a.K), kA8DecodeMaxM)) return decode_int4_a8(a);
    if (vnni_a8(a)) return;
    std::vector<float> xh;
    return qmatmul_run(act8_fp32_copy(a, xh));
  }
  if (a.M <= decode_rows(a)) {
    if (a.bits == 4) decode_int4(a);
    else decode_int8(a);
  } else if (!amx_gemm(a) && !bf16_prefill(a)) {
    prefill(a);
  }
}

}  // namespace PQ_ISA_NS
}  // namespace pyquant

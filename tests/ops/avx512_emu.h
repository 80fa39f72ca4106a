// Portable stand-ins for the AVX-512 intrinsics that csrc/cpu/qmatmul_avx512.cpp uses, so its
// vector traits and the shared kernels (qmatmul_kernels.h at W = 16) run on a CPU without
// AVX-512 (tests/ops/test_qmatmul_avx512_emu.py). Include this first: it pulls in the real
// <immintrin.h> (whose include guard then makes the .cpp's own include a no-op) and renames
// the types and intrinsics to the plain-C++ versions below. Each one follows Intel's
// definition lane by lane; _mm512_reduce_add_ps adds in a different order (fine against a
// float64 reference with a rounding bound).
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>

struct emu_m512 { float f[16]; };
struct emu_m512i { uint32_t u[16]; };
struct emu_m128i { uint8_t b[16]; };
struct emu_m256i { uint16_t h[16]; };  // only as 16 fp16 values (_mm512_cvtph_ps)

inline emu_m512 emu_setzero_ps() { return emu_m512{}; }
inline emu_m512 emu_set1_ps(float a) { emu_m512 r; for (float& v : r.f) v = a; return r; }
inline emu_m512 emu_loadu_ps(const float* p) { emu_m512 r; std::memcpy(r.f, p, 64); return r; }
inline emu_m512 emu_load_ps(const float* p) {
  if (reinterpret_cast<uintptr_t>(p) % 64) __builtin_trap();  // the real one faults when unaligned
  return emu_loadu_ps(p);
}
inline void emu_storeu_ps(float* p, emu_m512 v) { std::memcpy(p, v.f, 64); }
inline emu_m512 emu_add_ps(emu_m512 a, emu_m512 b) { for (int l = 0; l < 16; ++l) a.f[l] += b.f[l]; return a; }
inline emu_m512 emu_fmadd_ps(emu_m512 a, emu_m512 b, emu_m512 c) {
  for (int l = 0; l < 16; ++l) c.f[l] = std::fma(a.f[l], b.f[l], c.f[l]);
  return c;
}
inline float emu_reduce_add_ps(emu_m512 v) { float s = 0.f; for (float x : v.f) s += x; return s; }
inline emu_m512i emu_loadu_si512(const void* p) { emu_m512i r; std::memcpy(r.u, p, 64); return r; }
// reads only the dwords the mask selects (the real one suppresses faults past them)
inline emu_m512i emu_maskz_loadu_epi32(uint16_t k, const void* p) {
  emu_m512i r{};
  for (int l = 0; l < 16; ++l)
    if (k >> l & 1) std::memcpy(&r.u[l], static_cast<const char*>(p) + 4 * l, 4);
  return r;
}
// likewise, floats and bytes
inline emu_m512 emu_maskz_loadu_ps(uint16_t k, const float* p) {
  emu_m512 r{};
  for (int l = 0; l < 16; ++l)
    if (k >> l & 1) r.f[l] = p[l];
  return r;
}
inline emu_m128i emu_maskz_loadu_epi8(uint16_t k, const void* p) {
  emu_m128i r{};
  for (int l = 0; l < 16; ++l)
    if (k >> l & 1) r.b[l] = static_cast<const uint8_t*>(p)[l];
  return r;
}
inline emu_m512i emu_set1_epi32(int a) { emu_m512i r; for (uint32_t& v : r.u) v = static_cast<uint32_t>(a); return r; }
inline emu_m512i emu_and_si512(emu_m512i a, emu_m512i b) { for (int l = 0; l < 16; ++l) a.u[l] &= b.u[l]; return a; }
inline emu_m512i emu_xor_si512(emu_m512i a, emu_m512i b) { for (int l = 0; l < 16; ++l) a.u[l] ^= b.u[l]; return a; }
inline emu_m512i emu_srli_epi32(emu_m512i a, unsigned n) {
  for (uint32_t& v : a.u) v = n > 31 ? 0u : v >> n;
  return a;
}
inline emu_m512 emu_castsi512_ps(emu_m512i a) { emu_m512 r; std::memcpy(r.f, a.u, 64); return r; }
inline emu_m512 emu_cvtepi32_ps(emu_m512i a) {
  emu_m512 r;
  for (int l = 0; l < 16; ++l) r.f[l] = static_cast<float>(static_cast<int32_t>(a.u[l]));
  return r;
}
inline emu_m128i emu_loadu_si128(const emu_m128i* p) { emu_m128i r; std::memcpy(r.b, p, 16); return r; }
inline emu_m512i emu_cvtepi8_epi32(emu_m128i a) {
  emu_m512i r;
  for (int l = 0; l < 16; ++l) r.u[l] = static_cast<uint32_t>(static_cast<int32_t>(static_cast<int8_t>(a.b[l])));
  return r;
}
inline emu_m512i emu_cvtepu8_epi32(emu_m128i a) { emu_m512i r; for (int l = 0; l < 16; ++l) r.u[l] = a.b[l]; return r; }
inline emu_m256i emu_loadu_si256(const emu_m256i* p) { emu_m256i r; std::memcpy(r.h, p, 32); return r; }
inline emu_m512 emu_cvtph_ps(emu_m256i a) {  // IEEE binary16 -> float, exactly
  emu_m512 r;
  for (int l = 0; l < 16; ++l) {
    const int e = (a.h[l] >> 10) & 31, m = a.h[l] & 1023;
    const float mag = e == 31 ? (m ? NAN : INFINITY) : e ? std::ldexp(1024.f + m, e - 25) : std::ldexp(float(m), -24);
    r.f[l] = a.h[l] & 0x8000 ? -mag : mag;
  }
  return r;
}

// bf16 dot products (V::nib_bf16, V::dot_bf16): 16-bit lanes, ternary logic, vdpbf16ps.
inline emu_m512i emu_set1_epi16(short a) {
  emu_m512i r;
  const uint32_t h = static_cast<uint16_t>(a);
  for (uint32_t& v : r.u) v = h | h << 16;
  return r;
}
template <bool Left>
inline emu_m512i emu_shift_epi16(emu_m512i a, unsigned n) {
  uint16_t h[32];
  std::memcpy(h, a.u, 64);
  for (uint16_t& v : h) v = n > 15 ? 0 : static_cast<uint16_t>(Left ? v << n : v >> n);
  std::memcpy(a.u, h, 64);
  return a;
}
// bit i of the result: bit ((a << 2) | (b << 1) | c) of imm, from the bits i of a, b, c
inline emu_m512i emu_ternarylogic_epi32(emu_m512i a, emu_m512i b, emu_m512i c, int imm) {
  emu_m512i r;
  for (int l = 0; l < 16; ++l) {
    uint32_t v = 0;
    for (int i = 0; i < 8; ++i)
      if (imm >> i & 1) v |= (i & 4 ? a.u[l] : ~a.u[l]) & (i & 2 ? b.u[l] : ~b.u[l]) & (i & 1 ? c.u[l] : ~c.u[l]);
    r.u[l] = v;
  }
  return r;
}
// bf16 -> float with denormals as zero, as vdpbf16ps reads its inputs
inline float emu_bf16_daz(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  if ((u & 0x7f800000u) == 0) u &= 0x80000000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// acc lane l += a[2l+1] * b[2l+1], then += a[2l] * b[2l] (Intel's order), each rounded to
// nearest even, a denormal result flushed to zero
inline emu_m512 emu_dpbf16_ps(emu_m512 acc, emu_m512i a, emu_m512i b) {
  uint16_t ah[32], bh[32];
  std::memcpy(ah, a.u, 64);
  std::memcpy(bh, b.u, 64);
  for (int l = 0; l < 16; ++l) {
    float t = acc.f[l];
    for (int j : {2 * l + 1, 2 * l}) {
      t = std::fma(emu_bf16_daz(ah[j]), emu_bf16_daz(bh[j]), t);
      if (std::fpclassify(t) == FP_SUBNORMAL) t = std::copysign(0.f, t);
    }
    acc.f[l] = t;
  }
  return acc;
}

// The -a8 tile's integer dot products (V::lo4, hi4, maddubs, add16, sum16, dpbusd) and
// scale_block's permute.
inline emu_m512i emu_set1_epi8(char a) {
  emu_m512i r;
  std::memset(r.u, static_cast<unsigned char>(a), 64);
  return r;
}
inline void emu_s16(const emu_m512i& a, int16_t (&h)[32]) { std::memcpy(h, a.u, 64); }
inline emu_m512i emu_from_s16(const int16_t (&h)[32]) { emu_m512i r; std::memcpy(r.u, h, 64); return r; }
inline int16_t emu_sat16(int32_t v) { return static_cast<int16_t>(v > 32767 ? 32767 : v < -32768 ? -32768 : v); }
// s16 lane j = sat(u8 a[2j] * s8 b[2j] + u8 a[2j+1] * s8 b[2j+1])
inline emu_m512i emu_maddubs_epi16(emu_m512i a, emu_m512i b) {
  uint8_t ua[64];
  int8_t sb[64];
  std::memcpy(ua, a.u, 64);
  std::memcpy(sb, b.u, 64);
  int16_t h[32];
  for (int j = 0; j < 32; ++j) h[j] = emu_sat16(ua[2 * j] * sb[2 * j] + ua[2 * j + 1] * sb[2 * j + 1]);
  return emu_from_s16(h);
}
inline emu_m512i emu_add_epi16(emu_m512i a, emu_m512i b) {  // wrapping
  int16_t x[32], y[32];
  emu_s16(a, x);
  emu_s16(b, y);
  for (int j = 0; j < 32; ++j) x[j] = static_cast<int16_t>(static_cast<uint16_t>(x[j]) + static_cast<uint16_t>(y[j]));
  return emu_from_s16(x);
}
// s32 lane l = a[2l] * b[2l] + a[2l+1] * b[2l+1] (s16 lanes)
inline emu_m512i emu_madd_epi16(emu_m512i a, emu_m512i b) {
  int16_t x[32], y[32];
  emu_s16(a, x);
  emu_s16(b, y);
  emu_m512i r;
  for (int l = 0; l < 16; ++l)
    r.u[l] = static_cast<uint32_t>(int32_t{x[2 * l]} * y[2 * l] + int32_t{x[2 * l + 1]} * y[2 * l + 1]);
  return r;
}
// The -a8 GEMM's packing (V::storei, sll, bor, sub32)
inline void emu_storeu_si512(void* p, emu_m512i v) { std::memcpy(p, v.u, 64); }
inline emu_m512i emu_permutexvar_epi16(emu_m512i idx, emu_m512i table) {
  uint16_t i[32], t[32], r[32];
  std::memcpy(i, idx.u, 64);
  std::memcpy(t, table.u, 64);
  for (int l = 0; l < 32; ++l) r[l] = t[i[l] & 31];
  emu_m512i out;
  std::memcpy(out.u, r, 64);
  return out;
}
inline emu_m512i emu_slli_epi32(emu_m512i a, unsigned n) {
  for (uint32_t& v : a.u) v = n > 31 ? 0u : v << n;
  return a;
}
inline emu_m512i emu_or_si512(emu_m512i a, emu_m512i b) { for (int l = 0; l < 16; ++l) a.u[l] |= b.u[l]; return a; }
inline emu_m512i emu_sub_epi32(emu_m512i a, emu_m512i b) { for (int l = 0; l < 16; ++l) a.u[l] -= b.u[l]; return a; }
// and its transposing gather (V::gather16)
inline emu_m512i emu_castsi128_si512(emu_m128i a) {  // the upper lanes are undefined: zero here
  emu_m512i r{};
  std::memcpy(r.u, a.b, 16);
  return r;
}
inline emu_m512i emu_inserti32x4(emu_m512i a, emu_m128i b, int lane) {
  std::memcpy(a.u + 4 * (lane & 3), b.b, 16);
  return a;
}
// unpack{lo,hi}: in each 128-bit lane, interleave the low (hi: high) halves' elements of a and b
template <int Elem, bool Hi>
inline emu_m512i emu_unpack(emu_m512i a, emu_m512i b) {
  constexpr int per = Elem == 32 ? 1 : 2, half = 2 / per;  // dwords an element; elements a half lane
  emu_m512i r;
  for (int c = 0; c < 4; ++c)
    for (int e = 0; e < half; ++e)
      for (int d = 0; d < per; ++d) {
        const int from = 4 * c + (Hi ? 2 : 0) + e * per + d;
        r.u[4 * c + 2 * e * per + d] = a.u[from];
        r.u[4 * c + (2 * e + 1) * per + d] = b.u[from];
      }
  return r;
}
inline emu_m512i emu_castps_si512(emu_m512 a) { emu_m512i r; std::memcpy(r.u, a.f, 64); return r; }
#define _mm512_castps_si512 emu_castps_si512
#define _mm512_castsi128_si512 emu_castsi128_si512
#define _mm512_inserti32x4 emu_inserti32x4
#define _mm512_unpacklo_epi32 emu_unpack<32, false>
#define _mm512_unpackhi_epi32 emu_unpack<32, true>
#define _mm512_unpacklo_epi64 emu_unpack<64, false>
#define _mm512_unpackhi_epi64 emu_unpack<64, true>
#define _mm512_storeu_si512 emu_storeu_si512
#define _mm512_slli_epi32 emu_slli_epi32
#define _mm512_permutexvar_epi16 emu_permutexvar_epi16
#define _mm512_or_si512 emu_or_si512
#define _mm512_sub_epi32 emu_sub_epi32
// vpdpbusd (V::dpbusd): s32 lane l = acc[l] + sum over its 4 bytes j of u8 a[4l+j] * s8 b[4l+j] (wrapping)
inline emu_m512i emu_dpbusd_epi32(emu_m512i acc, emu_m512i a, emu_m512i b) {
  uint8_t ua[64];
  int8_t sb[64];
  std::memcpy(ua, a.u, 64);
  std::memcpy(sb, b.u, 64);
  for (int l = 0; l < 16; ++l) {
    int64_t t = static_cast<int32_t>(acc.u[l]);
    for (int j = 0; j < 4; ++j) t += ua[4 * l + j] * sb[4 * l + j];
    acc.u[l] = static_cast<uint32_t>(t);
  }
  return acc;
}
inline emu_m512i emu_setr_epi32(int a0, int a1, int a2, int a3, int a4, int a5, int a6, int a7, int a8, int a9,
                                int a10, int a11, int a12, int a13, int a14, int a15) {
  const int v[16] = {a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15};
  emu_m512i r;
  for (int l = 0; l < 16; ++l) r.u[l] = static_cast<uint32_t>(v[l]);
  return r;
}
inline emu_m512 emu_castps128_ps512(__m128 a) {  // the upper lanes are undefined: zero here
  emu_m512 r{};
  _mm_storeu_ps(r.f, a);
  return r;
}
inline emu_m512 emu_permutexvar_ps(emu_m512i idx, emu_m512 a) {
  emu_m512 r;
  for (int l = 0; l < 16; ++l) r.f[l] = a.f[idx.u[l] & 15];
  return r;
}
#define _mm512_set1_epi8 emu_set1_epi8
#define _mm512_maddubs_epi16 emu_maddubs_epi16
#define _mm512_add_epi16 emu_add_epi16
#define _mm512_madd_epi16 emu_madd_epi16
#define _mm512_setr_epi32 emu_setr_epi32
#define _mm512_castps128_ps512 emu_castps128_ps512
#define _mm512_permutexvar_ps emu_permutexvar_ps
#define PQ_DPBUSD emu_dpbusd_epi32

// AMX's eight tiles (palette 1, shaped by ldtilecfg's rows and bytes per row), one set per
// thread as the hardware's; tdpbf16ps as Intel defines it: C[m][n] += A[m][2k] * B[k][2n] and then
// += A[m][2k + 1] * B[k][2n + 1], bf16 operands widened to fp32, denormal operands as zero; and
// tdpbssd: C[m][n] (s32) += the four products A[m][4k + e] * B[k][4n + e] (s8). Reads past a
// tile's configured shape trap.
struct emu_tiles {
  struct shape { int rows = 16, colsb = 64; };
  static shape& cfg(int t) {
    static thread_local shape s[8];
    if (t < 0 || t > 7) __builtin_trap();
    return s[t];
  }
  static void config(const void* p) {
    const auto* b = static_cast<const uint8_t*>(p);
    if (b[0] != 1) __builtin_trap();  // palette 1
    for (int t = 0; t < 8; ++t) {
      uint16_t colsb;
      std::memcpy(&colsb, b + 16 + 2 * t, 2);
      cfg(t) = {b[48 + t], colsb};
      if (b[48 + t] > 16 || colsb > 64) __builtin_trap();
    }
  }
  static uint8_t (&tile(int t))[16][64] {
    static thread_local uint8_t tiles[8][16][64];
    if (t < 0 || t > 7) __builtin_trap();
    return tiles[t];
  }
  static void load(int t, const void* p, int64_t stride) {
    std::memset(tile(t), 0, sizeof(tile(t)));
    for (int r = 0; r < cfg(t).rows; ++r)
      std::memcpy(tile(t)[r], static_cast<const uint8_t*>(p) + r * stride, cfg(t).colsb);
  }
  static void store(int t, void* p, int64_t stride) {
    for (int r = 0; r < cfg(t).rows; ++r)
      std::memcpy(static_cast<uint8_t*>(p) + r * stride, tile(t)[r], cfg(t).colsb);
  }
  static void zero(int t) { std::memset(tile(t), 0, sizeof(tile(t))); }
  static float bf16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    if ((h & 0x7F80) == 0) h &= 0x8000;  // denormals are zero
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  // the shapes must agree: A rows = C rows, A's k (colsb / 4 lanes) = B rows, B colsb = C colsb
  static void check(int c, int a, int b) {
    if (cfg(a).rows != cfg(c).rows || cfg(a).colsb / 4 != cfg(b).rows || cfg(b).colsb != cfg(c).colsb) __builtin_trap();
  }
  // C[m][n] (Acc) += the products of A[m][k]'s and B[k][n]'s Per elements (4 / Per bytes each) of
  // every 4-byte lane k, in order; mul(a, b) multiplies one pair
  template <class Acc, int Per, class Mul>
  static void dp(int c, int a, int b, Mul mul) {
    check(c, a, b);
    for (int m = 0; m < cfg(c).rows; ++m)
      for (int n = 0; n < cfg(c).colsb / 4; ++n) {
        Acc acc;
        std::memcpy(&acc, &tile(c)[m][4 * n], 4);
        for (int k = 0; k < cfg(b).rows; ++k)
          for (int e = 0; e < Per; ++e) acc += mul(&tile(a)[m][4 * k + 4 / Per * e], &tile(b)[k][4 * n + 4 / Per * e]);
        std::memcpy(&tile(c)[m][4 * n], &acc, 4);
      }
  }
  static void dpbf16(int c, int a, int b) {
    dp<float, 2>(c, a, b, [](const uint8_t* x, const uint8_t* y) { return bf16(x) * bf16(y); });
  }
  static void dpbssd(int c, int a, int b) {
    dp<int32_t, 4>(c, a, b, [](const uint8_t* x, const uint8_t* y) {
      return int32_t{static_cast<int8_t>(*x)} * static_cast<int8_t>(*y);
    });
  }
};
#define PQ_TILE_EMU emu_tiles

#define _mm512_set1_epi16 emu_set1_epi16
#define _mm512_slli_epi16 emu_shift_epi16<true>
#define _mm512_srli_epi16 emu_shift_epi16<false>
#define _mm512_ternarylogic_epi32 emu_ternarylogic_epi32
#define PQ_DPBF16 emu_dpbf16_ps

#define __m512 emu_m512
#define __m512i emu_m512i
#define __m128i emu_m128i
#define __m256i emu_m256i
#define _mm256_loadu_si256 emu_loadu_si256
#define _mm512_cvtph_ps emu_cvtph_ps
#define _mm512_setzero_ps emu_setzero_ps
#define _mm512_set1_ps emu_set1_ps
#define _mm512_loadu_ps emu_loadu_ps
#define _mm512_load_ps emu_load_ps
#define _mm512_storeu_ps emu_storeu_ps
#define _mm512_add_ps emu_add_ps
#define _mm512_fmadd_ps emu_fmadd_ps
#define _mm512_reduce_add_ps emu_reduce_add_ps
#define _mm512_loadu_si512 emu_loadu_si512
#define _mm512_maskz_loadu_epi32 emu_maskz_loadu_epi32
#define _mm512_maskz_loadu_ps emu_maskz_loadu_ps
#define _mm_maskz_loadu_epi8 emu_maskz_loadu_epi8
#define __mmask16 uint16_t
#define _mm512_set1_epi32 emu_set1_epi32
#define _mm512_and_si512 emu_and_si512
#define _mm512_xor_si512 emu_xor_si512
#define _mm512_srli_epi32 emu_srli_epi32
#define _mm512_castsi512_ps emu_castsi512_ps
#define _mm512_cvtepi32_ps emu_cvtepi32_ps
#define _mm_loadu_si128 emu_loadu_si128
#define _mm512_cvtepi8_epi32 emu_cvtepi8_epi32
#define _mm512_cvtepu8_epi32 emu_cvtepu8_epi32

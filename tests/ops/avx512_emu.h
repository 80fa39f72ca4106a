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
#define _mm512_set1_epi32 emu_set1_epi32
#define _mm512_and_si512 emu_and_si512
#define _mm512_xor_si512 emu_xor_si512
#define _mm512_srli_epi32 emu_srli_epi32
#define _mm512_castsi512_ps emu_castsi512_ps
#define _mm512_cvtepi32_ps emu_cvtepi32_ps
#define _mm_loadu_si128 emu_loadu_si128
#define _mm512_cvtepi8_epi32 emu_cvtepi8_epi32
#define _mm512_cvtepu8_epi32 emu_cvtepu8_epi32

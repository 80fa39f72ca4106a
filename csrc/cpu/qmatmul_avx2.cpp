// qmatmul kernels for AVX2 + FMA (8 fp32 lanes). Compiled with -mavx2 -mfma -mf16c only.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace pyquant {
namespace isa_avx2 {

struct V {
  using F = __m256;
  using I = __m256i;
  static constexpr int W = 8;
  static constexpr bool kAmx = false;      // no AMX tiles at this level
  static constexpr bool kBf16Dot = false;  // no bf16 dot products at this level
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static float hsum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static I loadi(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  // The first nbytes (a multiple of 4, below 4W) of p, zeros past them; nothing past them is read.
  static I loadi_head(const uint8_t* p, int nbytes) {
    const I lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_maskload_epi32(reinterpret_cast<const int*>(p), _mm256_cmpgt_epi32(_mm256_set1_epi32(nbytes / 4), lanes));
  }
  static I band(I v, uint32_t mask) { return _mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(mask))); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  template <int N>
  static I srl(I v) { return _mm256_srli_epi32(v, N); }
  static F asf(I v) { return _mm256_castsi256_ps(v); }
  static I flip_bytes(I v) { return _mm256_xor_si256(v, _mm256_set1_epi32(static_cast<int>(0x80808080u))); }
  // Lane l of out[j]: bytes 4j..4j+3 of row p + l * stride (16 bytes from each of W rows), as in
  // the AVX-512 traits: two 4 x 4 dword transposes, one per 128-bit lane.
  static void gather16(const uint8_t* p, int64_t stride, I out[4]) {
    auto row = [&](int l) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + l * stride)); };
    I z[4];
    for (int r = 0; r < 4; ++r) z[r] = _mm256_inserti128_si256(_mm256_castsi128_si256(row(r)), row(r + 4), 1);
    const I t0 = _mm256_unpacklo_epi32(z[0], z[1]), t1 = _mm256_unpackhi_epi32(z[0], z[1]);
    const I t2 = _mm256_unpacklo_epi32(z[2], z[3]), t3 = _mm256_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
  }
  static F load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static F load_u8(const uint8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // The first n (0 < n < W) floats / uint8s at p as floats, zeros past them; nothing past them is
  // read. No byte-masked loads here: the bytes go to a register as two overlapping loads of 4 (or
  // 2) bytes, the second ending at byte n - 1 (the demo model's shapes at M = 1 against the scalar
  // sum these replaced: a loop of byte loads 0.97-0.99x, this 1.02-1.03x).
  static F load_head(const float* p, int n) {
    return _mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static F load_u8_head(const uint8_t* p, int n) {
    uint64_t v = p[0];
    if (n >= 4) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + n - 4, 4);
      v = lo | static_cast<uint64_t>(hi) << (8 * (n - 4));
    } else if (n >= 2) {
      uint16_t lo, hi;
      std::memcpy(&lo, p, 2);
      std::memcpy(&hi, p + n - 2, 2);
      v = lo | static_cast<uint64_t>(hi) << (8 * (n - 2));
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(v))));
  }
  static F load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  // The -a8 tile's integer dot products (qmatmul_a8.h): the low and the high nibble of every
  // byte, u8 x s8 products summed in pairs to s16 (vpmaddubsw), s16 adds, and s16 pairs summed
  // to s32 and converted (sum16).
  static constexpr bool kI8Dot = true;
  static constexpr bool kVnni = false;
  static I lo4(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
  static I hi4(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
  static I maddubs(I u8, I s8) { return _mm256_maddubs_epi16(u8, s8); }
  static I add16(I a, I b) { return _mm256_add_epi16(a, b); }
  static F sum16(I v) { return _mm256_cvtepi32_ps(_mm256_madd_epi16(v, _mm256_set1_epi16(1))); }
  // lane l gets s[l / lpg]. Called for groups smaller than a block (8W codes): with W = 8 and
  // group sizes 32, 64, 128, 256 (checked on entry) only 32, lpg = 4.
  static F scale_block(const float* s, int /*lpg = 4*/) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(s[0])), _mm_set1_ps(s[1]), 1);
  }
};

}  // namespace isa_avx2
}  // namespace pyquant

#define PQ_ISA_NS isa_avx2
#include "qmatmul_kernels.h"

// qmatmul kernels for AVX-512 (16 fp32 lanes): the AVX2 traits widened. Compiled with
// -mavx512f/bw/vl/dq; picked at run time only on CPUs that report those flags. The bf16 dot
// products (bf16 x: INT4 decode, the prefill GEMM) and the -a8 kernels' vpdpbusd are inline
// assembly, run only where the CPU reports AVX512-BF16 (bf16_dot()) or AVX512-VNNI (vnni_dot()).
#include <immintrin.h>

#include <cstdint>

namespace pyquant {
namespace isa_avx512 {

struct V {
  using F = __m512;
  using I = __m512i;
  static constexpr int W = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static I iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static float hsum(F v) { return _mm512_reduce_add_ps(v); }
  static I loadi(const uint8_t* p) { return _mm512_loadu_si512(reinterpret_cast<const void*>(p)); }
  // The first nbytes (a multiple of 4, below 4W) of p, zeros past them; nothing past them is read.
  static I loadi_head(const uint8_t* p, int nbytes) {
    return _mm512_maskz_loadu_epi32(static_cast<__mmask16>((1u << (nbytes / 4)) - 1), p);
  }
  static I band(I v, uint32_t mask) { return _mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(mask))); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  template <int N>
  static I srl(I v) { return _mm512_srli_epi32(v, N); }
  static F asf(I v) { return _mm512_castsi512_ps(v); }
  static I asi(F v) { return _mm512_castps_si512(v); }  // the bf16 GEMM's packing
  static I flip_bytes(I v) { return _mm512_xor_si512(v, _mm512_set1_epi32(static_cast<int>(0x80808080u))); }
  // Lane l of out[j]: bytes 4j..4j+3 of row p + l * stride (16 bytes read from each of W rows):
  // four 4 x 4 dword transposes, one per 128-bit lane. The GEMMs pack W with it; 4-byte loads
  // through a stack array (gather4) made the -a8 GEMM's INT8 packing 2x slower (bench/RESULTS.md).
  static void gather16(const uint8_t* p, int64_t stride, I out[4]) {
    auto row = [&](int l) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + l * stride)); };
    I z[4];
    for (int r = 0; r < 4; ++r) {  // z[r]'s 128-bit lane c: row r + 4c
      I v = _mm512_castsi128_si512(row(r));
      v = _mm512_inserti32x4(v, row(r + 4), 1);
      v = _mm512_inserti32x4(v, row(r + 8), 2);
      z[r] = _mm512_inserti32x4(v, row(r + 12), 3);
    }
    const I t0 = _mm512_unpacklo_epi32(z[0], z[1]), t1 = _mm512_unpackhi_epi32(z[0], z[1]);
    const I t2 = _mm512_unpacklo_epi32(z[2], z[3]), t3 = _mm512_unpackhi_epi32(z[2], z[3]);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
  }
  static F load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static F load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // The first n (0 < n < W) floats / uint8s at p as floats, zeros past them; nothing past them is read.
  static F load_head(const float* p, int n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static F load_u8_head(const uint8_t* p, int n) {
    return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << n) - 1), p)));
  }
  static F load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  // The -a8 tile's integer dot products (qmatmul_a8.h; AVX512BW), as in the AVX2 traits.
  static constexpr bool kI8Dot = true;
  static I lo4(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
  static I hi4(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15)); }
  static I maddubs(I u8, I s8) { return _mm512_maddubs_epi16(u8, s8); }
  static I add16(I a, I b) { return _mm512_add_epi16(a, b); }
  static F sum16(I v) { return _mm512_cvtepi32_ps(_mm512_madd_epi16(v, _mm512_set1_epi16(1))); }
  // vpdpbusd (AVX512-VNNI): acc lane l += the 4 products of its u8 and s8 bytes, in s32. The
  // -a8 kernels run it only where vnni_dot() says the CPU has it. Inline assembly: an intrinsic
  // would need a target attribute, and GCC does not inline such a function into a kernel without
  // it; tests/ops/avx512_emu.h puts its stand-in here through PQ_DPBUSD.
  static constexpr bool kVnni = true;
  // and for its integer GEMM (qmatmul_dot_prefill.h)
  static I set1i(int32_t a) { return _mm512_set1_epi32(a); }
  static I zero_i() { return _mm512_set1_epi32(0); }
  static void storei(uint8_t* p, I v) { _mm512_storeu_si512(reinterpret_cast<void*>(p), v); }
  template <int N>
  static I sll(I v) { return _mm512_slli_epi32(v, N); }
  static I bor(I a, I b) { return _mm512_or_si512(a, b); }
  static I sub32(I a, I b) { return _mm512_sub_epi32(a, b); }
  // 16-bit lane i: table's lane idx[i] & 31 (vpermw; the AMX GEMM's W packing, qmatmul_amx.h)
  static I permw(I idx, I table) { return _mm512_permutexvar_epi16(idx, table); }
  static I dpbusd(I acc, I u8, I s8) {
#ifdef PQ_DPBUSD
    return PQ_DPBUSD(acc, u8, s8);
#else
    asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
#endif
  }
  // lane l gets s[l / lpg]. Called for groups smaller than a block (8W codes): with W = 16 and
  // group sizes 32, 64, 128, 256 (checked on entry) 32 (lpg 4) or 64 (lpg 8). The 4 or 2 scales
  // are spread with one permute: filled lane by lane through a stack array, they made INT4 decode
  // at G = 32 or 64 0.6x and -a8 decode 0.25x what this gives (bench/RESULTS.md, fifteenth session).
  static F scale_block(const float* s, int lpg) {
    if (lpg == 4)
      return _mm512_permutexvar_ps(_mm512_srli_epi32(iota(), 2), _mm512_castps128_ps512(_mm_loadu_ps(s)));
    return _mm512_permutexvar_ps(_mm512_srli_epi32(iota(), 3),
                                 _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s)))));
  }
  // bf16 dot products (qmatmul_kernels.h, dec4_tile_bf16). Nibble S (0-3) of every 16-bit lane
  // as the bf16 number 1 + c/16: the code shifted to mantissa bits 3-6, then (t & 0x78) | 0x3f80
  // in one ternary-logic op (0xEA: A & B | C).
  static constexpr bool kBf16Dot = true;
  template <int S>
  static I nib_bf16(I v) {
    const I t = S == 0 ? _mm512_slli_epi16(v, 3) : _mm512_srli_epi16(v, 4 * S - 3);
    return _mm512_ternarylogic_epi32(t, _mm512_set1_epi16(0x78), _mm512_set1_epi16(0x3f80), 0xEA);
  }
  // acc lane l += a[2l] * b[2l] + a[2l+1] * b[2l+1] (bf16 pairs; products exact in fp32). Inline
  // assembly, as dpbusd: the intrinsic needs a target attribute, which the GEMM's micro-kernel,
  // shared with -a8, cannot carry (b may come from memory: 0.96x at decode with registers only);
  // tests/ops/avx512_emu.h puts its stand-in here through PQ_DPBF16.
  static F dot_bf16(F acc, I a, I b) {
#ifdef PQ_DPBF16
    return PQ_DPBF16(acc, a, b);
#else
    asm("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b));
    return acc;
#endif
  }
  // AMX tiles (qmatmul_amx.h), run only where amx() says the CPU has AMX-BF16 and AMX-INT8 and the
  // OS lets this process use them. Inline assembly, as above (tile numbers as immediates);
  // tests/ops/avx512_emu.h puts its stand-ins here through PQ_TILE_EMU.
  static constexpr bool kAmx = true;
#ifdef PQ_TILE_EMU
  static void tile_config(const void* cfg) { PQ_TILE_EMU::config(cfg); }
  template <int T>
  static void tile_load(const void* p, int64_t stride) { PQ_TILE_EMU::load(T, p, stride); }
  template <int T>
  static void tile_store(void* p, int64_t stride) { PQ_TILE_EMU::store(T, p, stride); }
  template <int T>
  static void tile_zero() { PQ_TILE_EMU::zero(T); }
  template <int C, int A, int B>
  static void tile_dp() { PQ_TILE_EMU::dpbf16(C, A, B); }
  template <int C, int A, int B>
  static void tile_dp_i8() { PQ_TILE_EMU::dpbssd(C, A, B); }
  static void tile_release() {}
#else
  static void tile_config(const void* cfg) { asm volatile("ldtilecfg (%0)" : : "r"(cfg) : "memory"); }
  template <int T>
  static void tile_load(const void* p, int64_t stride) {
    asm volatile("tileloadd (%0,%1,1), %%tmm%c2" : : "r"(p), "r"(stride), "i"(T) : "memory");
  }
  template <int T>
  static void tile_store(void* p, int64_t stride) {
    asm volatile("tilestored %%tmm%c2, (%0,%1,1)" : : "r"(p), "r"(stride), "i"(T) : "memory");
  }
  template <int T>
  static void tile_zero() { asm volatile("tilezero %%tmm%c0" : : "i"(T)); }
  template <int C, int A, int B>
  static void tile_dp() { asm volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" : : "i"(C), "i"(A), "i"(B)); }
  template <int C, int A, int B>  // C (s32) += A (s8) times B (s8): tdpbssd
  static void tile_dp_i8() { asm volatile("tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0" : : "i"(C), "i"(A), "i"(B)); }
  static void tile_release() { asm volatile("tilerelease" : : : "memory"); }
#endif
};

}  // namespace isa_avx512
}  // namespace pyquant

#define PQ_ISA_NS isa_avx512
#include "qmatmul_kernels.h"

// A/B timing of the CPU decode kernels (AVX2 or AVX-512): the working tree's csrc/cpu/qmatmul_kernels.h
// ("new") against another revision's ("base"), both compiled into this one program and timed
// interleaved (base sweep, new sweep, repeated), medians, so the comparison survives a noisy
// shared machine. Also times a plain 2-thread stream over the same packed weight bytes (the
// roofline of this access) and checks that both give the same outputs. Run it against HEAD with
// no change first: the two copies of the same code differ by themselves (Zen 4, AVX-512, INT4
// M = 1: "new" at 0.85-0.98x "base" with the weights from memory, 0.89-0.92x from L3, whichever
// side goes first or is included first): a ratio within that spread is no evidence. Build and
// run it with bench/decode_ab.sh (which extracts the base revision's sources and renames each side's ISA
// namespace, isa_avx2 or isa_avx512, to isa_new / isa_base); by hand:
//
//   g++ -O3 -fopenmp -mavx2 -mfma -mf16c -Icsrc/include -Icsrc/cpu -I<dir with new_isa.cpp, base_isa.cpp, \
//       base_kernels.h> \
//       bench/decode_ab.cpp csrc/cpu/cpu_features.cpp -o decode_ab
//   ./decode_ab BITS M [LAYERS] [N=K | NxK] [ROUNDS]
// Codes are read the way the library reads them on this CPU (PYQUANT_CODES overrides).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_dispatch.h"

#include "new_isa.cpp"   // namespace isa_new: the working tree's kernels
#undef PQ_ISA_NS
#include "base_isa.cpp"  // namespace isa_base: the base revision's

using namespace pyquant;

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s BITS(4|8) M [LAYERS=16] [SIZE=N|NxK, 4096] [ROUNDS=30] [SCALES=fp32|fp16]\n", argv[0]);
    return 2;
  }
  const int bits = std::atoi(argv[1]), M = std::atoi(argv[2]);
  const int L = argc > 3 ? std::atoi(argv[3]) : 16;
  // SIZE: N = K, or NxK (e.g. 192x576: the demo model's k_proj)
  const char* size = argc > 4 ? argv[4] : "4096";
  const char* times = std::strchr(size, 'x');
  const char* group_env = std::getenv("GROUP");  // INT4 group size (128)
  const int64_t N = std::atoll(size), K = times ? std::atoll(times + 1) : N, G = group_env ? std::atoll(group_env) : 128,
                ng = (K + G - 1) / G;
  const int rounds = argc > 5 ? std::atoi(argv[5]) : 30;
  const bool f16 = argc > 6 && std::string(argv[6]) == "fp16";  // scales stored as fp16
  std::srand(1);
  // Weight codes 64-byte aligned, as torch allocates them (malloc's 16 split a cache line every
  // other 32-byte load: 0.90x at INT4 M = 1).
  std::vector<std::vector<uint8_t, CacheAligned<uint8_t>>> q(L);
  std::vector<std::vector<uint8_t>> z(L);
  std::vector<std::vector<float>> s(L);
  for (int l = 0; l < L; ++l) {
    q[l].resize(bits == 4 ? N * ng * G / 2 : N * K);
    for (auto& b : q[l]) b = static_cast<uint8_t>(std::rand());
    s[l].resize(bits == 4 ? N * ng : N);
    for (auto& v : s[l]) v = 0.01f * static_cast<float>(std::rand() % 100 + 1);
    if (f16) {  // the same values as fp16, packed into the front of the float buffer
      std::vector<uint16_t> h(s[l].size());
      for (size_t i = 0; i < h.size(); ++i) h[i] = _cvtss_sh(s[l][i], 0);
      std::memcpy(s[l].data(), h.data(), h.size() * 2);
    }
    if (bits == 4) {
      z[l].resize(N * ng);
      for (auto& v : z[l]) v = static_cast<uint8_t>(std::rand() & 15);
    }
  }
  std::vector<float> x(M * K), yb(M * N), yn(M * N);
  for (auto& v : x) v = static_cast<float>(std::rand() % 2000 - 1000) * 1e-3f;
  // ACT=8: the new build runs the -a8 kernel (x quantized to int8); ACT_BASE=8: the base too
  const char* act_env = std::getenv("ACT");
  const char* act_base_env = std::getenv("ACT_BASE");
  const int act = act_env ? std::atoi(act_env) : 0, act_base = act_base_env ? std::atoi(act_base_env) : 0;
  // XDT=bf16: x (and y) in bf16, the values of the fp32 x rounded
  const char* xdt_env = std::getenv("XDT");
  const bool xbf = xdt_env && std::string(xdt_env) == "bf16";
  std::vector<uint16_t> xh(M * K), ybh(M * N), ynh(M * N);
  for (int64_t i = 0; i < M * K; ++i) xh[i] = isa_new::f32_to_bf16(x[i]);
  const char* threads_env = std::getenv("THREADS");  // the kernels' threads (the stream's: 2)
  const int threads = threads_env ? std::atoi(threads_env) : 2;
  auto args = [&](int l, float* y, int act_bits = 0) {
    void* yv = y;
    if (xbf) yv = y == yb.data() ? static_cast<void*>(ybh.data()) : static_cast<void*>(ynh.data());
    const DType xdt = xbf ? DType::BF16 : DType::F32;
    return QmmArgs{xbf ? static_cast<const void*>(xh.data()) : x.data(), xdt, M, K, K, q[l].data(), s[l].data(),
                   f16 ? DType::F16 : DType::F32, bits == 4 ? z[l].data() : nullptr, nullptr, bits,
                   bits == 4 ? static_cast<int>(G) : 0, N, yv, N, threads, xdt, act_bits};
  };
  isa_base::qmatmul_run(args(0, yb.data(), act_base));
  isa_new::qmatmul_run(args(0, yn.data(), act));
  if (xbf)
    for (int64_t i = 0; i < M * N; ++i) yb[i] = isa_new::bf16_to_f32(ybh[i]), yn[i] = isa_new::bf16_to_f32(ynh[i]);
  double diff = 0, ymax = 0;
  for (int64_t i = 0; i < M * N; ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(yn[i] - yb[i])));
    ymax = std::max(ymax, static_cast<double>(std::fabs(yb[i])));
  }
  // seconds per layer of one sweep over the L layers
  auto sweep = [&](int which) {
    const double t0 = now();
    float sink = 0.f;
    for (int l = 0; l < L; ++l) {
      if (which == 0) isa_base::qmatmul_run(args(l, yb.data(), act_base));
      else if (which == 1) isa_new::qmatmul_run(args(l, yn.data(), act));
      else {  // plain stream over the packed bytes: one parallel region per layer, static halves
        const uint8_t* base = q[l].data();
        const int64_t nb = static_cast<int64_t>(q[l].size()) / 128;
        float tot = 0.f;
#pragma omp parallel for reduction(+ : tot) num_threads(2) schedule(static)
        for (int64_t c = 0; c < nb; ++c) {
          const float* p = reinterpret_cast<const float*>(base + c * 128);
          __m256 a = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)),
                                   _mm256_add_ps(_mm256_loadu_ps(p + 16), _mm256_loadu_ps(p + 24)));
          alignas(32) float t[8];
          _mm256_store_ps(t, a);
          tot += t[0];
        }
        sink += tot;
      }
    }
    if (sink == 1234.5f) std::printf(" ");
    return (now() - t0) / L;
  };
  for (int w = 0; w < 3; ++w) sweep(w);
  std::vector<double> t[3];
  for (int r = 0; r < rounds; ++r)  // base and new take turns going first (each inherits the other's cache state)
    for (int w : {r & 1, 1 - (r & 1), 2}) t[w].push_back(sweep(w));
  for (auto& v : t) std::sort(v.begin(), v.end());
  const double wbytes = static_cast<double>(q[0].size() + s[0].size() * (f16 ? 2 : 4) + z[0].size());
  const double mb = t[0][rounds / 2], mn = t[1][rounds / 2], ms = t[2][rounds / 2];
  std::printf("int%d M=%d %lldx%lld x%d layers, medians of %d interleaved sweeps; max |new - base| = %.3g (max |y| %.3g)\n",
              bits, M, static_cast<long long>(N), static_cast<long long>(K), L, rounds, diff, ymax);
  std::printf("  base %8.1f us  %5.1f GB/s\n  new  %8.1f us  %5.1f GB/s  %.3fx base\n", mb * 1e6, wbytes / mb / 1e9,
              mn * 1e6, wbytes / mn / 1e9, mb / mn);
  std::printf("  plain stream of the packed codes %8.1f us  %5.1f GB/s\n", ms * 1e6,
              static_cast<double>(q[0].size()) / ms / 1e9);
}

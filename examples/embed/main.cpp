// Uses pyquant's embeddable C++ API (csrc/include/pyquant/) with no Python and no torch:
// packs a random weight in the documented INT4 and INT8 formats, runs qmatmul_cpu at decode and
// prefill sizes, streams an LM head's logits tile by tile through stream_reduce_tile_cpu, and
// checks every result against a plain double-precision computation. Exits 0 when all agree.
#include <pyquant/pyquant.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

namespace {

std::mt19937 rng(1234);
std::vector<float> randn(size_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

int failures = 0;
void check(bool ok, const char* what, double err) {
  std::printf("%-52s max err %.3g  %s\n", what, err, ok ? "ok" : "FAIL");
  failures += !ok;
}

// A weight in pyquant's format, with its dequantized values in double for the reference.
struct Packed {
  int bits, group;
  int64_t n, k;
  std::vector<uint8_t> codes, zeros;  // INT4: [N, Kp/2] low nibble first, zeros [N, ngroups]
  std::vector<int8_t> q8;             // INT8: [N, K]
  std::vector<float> scales;
  std::vector<double> w;              // dequantized [N, K]
};

// INT4, asymmetric, round to nearest: per group of `group` columns of a row,
// scale = (max - min) / 15, zero = round(-min / scale), code = clamp(round(w / scale) + zero).
Packed pack_int4(const std::vector<float>& w, int64_t n, int64_t k, int group) {
  Packed p{4, group, n, k};
  const int64_t ng = (k + group - 1) / group, kp = ng * group;
  p.codes.assign(n * kp / 2, 0);
  p.zeros.resize(n * ng);
  p.scales.resize(n * ng);
  p.w.resize(n * k);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t k0 = g * group, k1 = std::min(k, k0 + group);  // the last group is ragged
      float lo = 0, hi = 0;
      for (int64_t c = k0; c < k1; ++c) lo = std::min(lo, w[r * k + c]), hi = std::max(hi, w[r * k + c]);
      const float s = (hi - lo) / 15 > 0 ? (hi - lo) / 15 : 1.0f;
      const int z = std::clamp(static_cast<int>(std::nearbyint(-lo / s)), 0, 15);
      p.scales[r * ng + g] = s;
      p.zeros[r * ng + g] = static_cast<uint8_t>(z);
      for (int64_t c = k0; c < k1; ++c) {
        const int q = std::clamp(static_cast<int>(std::nearbyint(w[r * k + c] / s)) + z, 0, 15);
        p.codes[(r * kp + c) / 2] |= static_cast<uint8_t>(q << (4 * (c & 1)));
        p.w[r * k + c] = static_cast<double>(q - z) * s;
      }
    }
  return p;
}

// INT8, symmetric per output channel: scale = max|w| / 127.
Packed pack_int8(const std::vector<float>& w, int64_t n, int64_t k) {
  Packed p{8, 0, n, k};
  p.q8.resize(n * k);
  p.scales.resize(n);
  p.w.resize(n * k);
  for (int64_t r = 0; r < n; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < k; ++c) amax = std::max(amax, std::fabs(w[r * k + c]));
    const float s = amax > 0 ? amax / 127 : 1.0f;
    p.scales[r] = s;
    for (int64_t c = 0; c < k; ++c) {
      const int q = std::clamp(static_cast<int>(std::nearbyint(w[r * k + c] / s)), -127, 127);
      p.q8[r * k + c] = static_cast<int8_t>(q);
      p.w[r * k + c] = static_cast<double>(q) * s;
    }
  }
  return p;
}

void test_qmatmul(const Packed& p, int64_t m, const char* name) {
  const auto x = randn(m * p.k), bias = randn(p.n);
  std::vector<float> y(m * p.n);
  const void* qw = p.bits == 4 ? static_cast<const void*>(p.codes.data()) : p.q8.data();
  const pyquant::Status st = pyquant::qmatmul_cpu(
      x.data(), pyquant::DType::F32, m, p.k, p.k, qw, p.scales.data(), pyquant::DType::F32,
      p.bits == 4 ? p.zeros.data() : nullptr, bias.data(), p.bits, p.group, p.n, y.data(), p.n,
      /*num_threads=*/0);
  if (st != pyquant::kOk) {
    std::printf("%s: qmatmul_cpu failed: %s\n", name, pyquant::last_error());
    ++failures;
    return;
  }
  // fp32 accumulation against a double reference: bound the error by the sum of |x w|.
  double worst = 0;
  bool ok = true;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < p.n; ++j) {
      double ref = bias[j], mag = std::fabs(bias[j]);
      for (int64_t c = 0; c < p.k; ++c) {
        ref += static_cast<double>(x[i * p.k + c]) * p.w[j * p.k + c];
        mag += std::fabs(x[i * p.k + c] * p.w[j * p.k + c]);
      }
      const double err = std::fabs(y[i * p.n + j] - ref);
      worst = std::max(worst, err);
      ok = ok && err <= 1e-5 * mag + 1e-6;
    }
  check(ok, name, worst);
}

// Log-sum-exp and top-N of logits = hidden @ head^T, walked over vocabulary tiles of vt columns
// (the caller's GEMM block), never holding all V logits of a row at once... except here, in the
// double-precision reference.
void test_stream(int64_t rows, int64_t h, int64_t v, int64_t vt, int top_n) {
  const auto hidden = randn(rows * h), head = randn(v * h);
  std::vector<float> run_max(rows, -std::numeric_limits<float>::infinity()), run_sum(rows, 0.0f);
  std::vector<float> top_vals(rows * top_n, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> top_ids(rows * top_n, -1), targets(rows);
  std::vector<float> target_logits(rows, 0.0f), tile(rows * vt);
  for (int64_t r = 0; r < rows; ++r) targets[r] = (r * 7919) % v;
  for (int64_t v0 = 0; v0 < v; v0 += vt) {
    const int64_t w = std::min(vt, v - v0);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < w; ++j)
        tile[r * vt + j] = std::inner_product(&hidden[r * h], &hidden[r * h] + h, &head[(v0 + j) * h], 0.0f);
    if (pyquant::stream_reduce_tile_cpu(tile.data(), rows, w, vt, v0, run_max.data(), run_sum.data(),
                                        top_vals.data(), top_ids.data(), top_n, targets.data(),
                                        target_logits.data(), nullptr, 0, nullptr, 0) != pyquant::kOk) {
      std::printf("stream_reduce_tile_cpu failed: %s\n", pyquant::last_error());
      ++failures;
      return;
    }
  }
  double worst = 0;
  bool ok = true;
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> logit(v);
    for (int64_t j = 0; j < v; ++j)  // the same fp32 dot products as the tiles, widened
      logit[j] = std::inner_product(&hidden[r * h], &hidden[r * h] + h, &head[j * h], 0.0f);
    const double mx = *std::max_element(logit.begin(), logit.end());
    double sum = 0;
    for (double l : logit) sum += std::exp(l - mx);
    const double lse = mx + std::log(sum), got = run_max[r] + std::log(static_cast<double>(run_sum[r]));
    std::vector<int64_t> order(v);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logit[a] > logit[b]; });
    worst = std::max(worst, std::fabs(got - lse) / std::max(1.0, std::fabs(lse)));
    ok = ok && std::fabs(got - lse) <= 1e-5 * std::max(1.0, std::fabs(lse));
    ok = ok && target_logits[r] == static_cast<float>(logit[targets[r]]);
    for (int i = 0; i < top_n; ++i)
      ok = ok && top_ids[r * top_n + i] == order[i] && top_vals[r * top_n + i] == static_cast<float>(logit[order[i]]);
  }
  check(ok, "stream_reduce_tile_cpu: logsumexp, top-N, target", worst);
}

}  // namespace

int main() {
  std::printf("pyquant CPU kernels: isa %s, codes %s\n", pyquant::cpu_isa(), pyquant::cpu_codes());
  const int64_t n = 37, k = 300;  // K = 300: the last group of 128 holds 44 columns
  const auto w = randn(n * k);
  const Packed w4 = pack_int4(w, n, k, 128), w8 = pack_int8(w, n, k);
  test_qmatmul(w4, 1, "qmatmul_cpu INT4-g128, M = 1 (decode)");
  test_qmatmul(w4, 20, "qmatmul_cpu INT4-g128, M = 20 (prefill)");
  test_qmatmul(w8, 3, "qmatmul_cpu INT8, M = 3 (decode)");
  test_qmatmul(w8, 20, "qmatmul_cpu INT8, M = 20 (prefill)");
  test_stream(5, 64, 1000, 256, 8);

  // Bad input comes back as a status and a message, never as a crash.
  std::vector<float> x(k), y(n);
  const pyquant::Status st = pyquant::qmatmul_cpu(x.data(), pyquant::DType::F32, 1, k, k, w4.codes.data(),
                                                  w4.scales.data(), pyquant::DType::F32, w4.zeros.data(),
                                                  nullptr, 4, /*group_size=*/48, n, y.data(), n, 0);
  const bool rejected = st != pyquant::kOk && pyquant::last_error()[0] != '\0';
  std::printf("group_size 48 rejected: %s (%s)\n", rejected ? "ok" : "FAIL", pyquant::last_error());
  failures += !rejected;

  std::printf(failures ? "%d check(s) FAILED\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}

// Stream tile reducer (CPU): online log-sum-exp, running top-N and target/reference gathers, in
// one pass over a tile of logits. The vector primitives (max, sum of exp, threshold scan) come in
// a scalar and an AVX2 flavour (stream_avx2.cpp), picked at run time; the rest is shared.
#include "pyquant/stream.h"

#include <omp.h>

#include <cmath>
#include <string>

#include "cpu_dispatch.h"

namespace pyquant {

namespace stream_avx2 {
float tile_max(const float* x, int64_t n);
double sum_exp(const float* x, int64_t n, float shift);
int64_t next_at_least(const float* x, int64_t i, int64_t n, float thr);
}  // namespace stream_avx2

namespace {

namespace scalar {
float tile_max(const float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}
double sum_exp(const float* x, int64_t n, float shift) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += std::exp(static_cast<double>(x[i]) - shift);
  return acc;
}
int64_t next_at_least(const float* x, int64_t i, int64_t n, float thr) {
  for (; i < n; ++i)
    if (x[i] >= thr) return i;
  return n;
}
}  // namespace scalar

struct Primitives {
  float (*tile_max)(const float*, int64_t);
  double (*sum_exp)(const float*, int64_t, float);
  int64_t (*next_at_least)(const float*, int64_t, int64_t, float);
};

Primitives pick() {
  if (active_isa() != Isa::Scalar)  // AVX-512 machines use the AVX2 primitives too
    return {stream_avx2::tile_max, stream_avx2::sum_exp, stream_avx2::next_at_least};
  return {scalar::tile_max, scalar::sum_exp, scalar::next_at_least};
}

// (val, id) ranks before slot (sv, sid): larger value, or equal value and the slot is empty (-1).
// Real ids arrive in increasing order, so an equal value never displaces a real (lower) id.
inline bool better(float val, float sv, int64_t sid) { return val > sv || (val == sv && sid < 0); }

// Insert (val, id) into the sorted list (length n, last slot is displaced); caller checked better().
inline void insert(float* vals, int64_t* ids, int n, float val, int64_t id) {
  int pos = n - 1;
  while (pos > 0 && better(val, vals[pos - 1], ids[pos - 1])) {
    vals[pos] = vals[pos - 1];
    ids[pos] = ids[pos - 1];
    --pos;
  }
  vals[pos] = val;
  ids[pos] = id;
}

void reduce_row(const Primitives& k, const float* x, int64_t vt, int64_t v0, float& run_max, float& run_sum,
                float* vals, int64_t* ids, int n) {
  // online log-sum-exp: rescale the running sum when the max grows; an all -inf tile adds nothing
  const float m = k.tile_max(x, vt);
  if (m > -INFINITY) {
    if (m > run_max) {
      run_sum = run_max == -INFINITY ? 0.0f : static_cast<float>(run_sum * std::exp(static_cast<double>(run_max) - m));
      run_max = m;
    }
    run_sum = static_cast<float>(run_sum + k.sum_exp(x, vt, run_max));
  }
  // top-N: scan for values >= the current N-th (ties are resolved by better())
  int64_t i = 0;
  while ((i = k.next_at_least(x, i, vt, vals[n - 1])) < vt) {
    if (better(x[i], vals[n - 1], ids[n - 1])) insert(vals, ids, n, x[i], v0 + i);
    ++i;
  }
}

}  // namespace

Status stream_reduce_tile_cpu(const float* logits, int64_t rows, int64_t vt, int64_t ld, int64_t v0,
                              float* run_max, float* run_sum, float* top_vals, int64_t* top_ids, int top_n,
                              const int64_t* targets, float* target_logits, const int64_t* ref_ids, int n_ref,
                              float* ref_logits, int num_threads) {
  if (rows < 0 || vt < 0 || ld < vt || v0 < 0 || top_n < 1) {
    set_last_error("stream_reduce_tile_cpu: bad sizes (rows=" + std::to_string(rows) + ", vt=" + std::to_string(vt) +
                   ", ld=" + std::to_string(ld) + ", v0=" + std::to_string(v0) + ", top_n=" + std::to_string(top_n) + ")");
    return kInvalidArgument;
  }
  if ((rows && vt && !logits) || (rows && (!run_max || !run_sum || !top_vals || !top_ids)) ||
      (targets && !target_logits) || (ref_ids && (n_ref < 1 || !ref_logits))) {
    set_last_error("stream_reduce_tile_cpu: a required pointer is null (or n_ref < 1 with ref_ids)");
    return kInvalidArgument;
  }
  if (rows == 0 || vt == 0) return kOk;
  const Primitives k = pick();
  const int64_t v1 = v0 + vt;
#pragma omp parallel for schedule(static) num_threads(num_threads > 0 ? num_threads : omp_get_max_threads())
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits + r * ld;
    reduce_row(k, x, vt, v0, run_max[r], run_sum[r], top_vals + r * top_n, top_ids + r * top_n, top_n);
    if (targets) {
      const int64_t t = targets[r];
      if (t >= v0 && t < v1) target_logits[r] = x[t - v0];
    }
    if (ref_ids) {
      for (int j = 0; j < n_ref; ++j) {
        const int64_t id = ref_ids[r * n_ref + j];
        if (id >= v0 && id < v1) ref_logits[r * n_ref + j] = x[id - v0];
      }
    }
  }
  return kOk;
}

}  // namespace pyquant

// Stream tile reducer (CUDA): fold one tile of logits into the running per-row state (online
// log-sum-exp, top-N, target / reference gathers). Semantics: pyquant/stream_cuda.h.
//
// One CTA of kThreads threads per row. Each thread strides over the row's columns once, keeping
// its own (max, sum of exp) and its best top-N key; a block reduction gives the tile's
// log-sum-exp, merged into run_max / run_sum. Top-N: the row's current list lives in shared
// memory as packed keys (stream_topn.cuh), sorted descending. While the block-wide best remaining
// key beats the list's last key, it is inserted (thread 0, sorted insertion) and the one thread
// that owned it rescans its own columns for its next best key below it. After the first tiles
// few columns beat the N-th logit, so this costs a few rounds per row; at most top_n rounds.
#include <cuda_runtime.h>

#include <string>

#include "pyquant/stream_cuda.h"
#include "stream_topn.cuh"

namespace pyquant {

void set_last_error(const std::string& msg);  // csrc/cpu/cpu_features.cpp

namespace stream_cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// Best key among this thread's columns that is strictly below `below` (kEmpty if none).
__device__ __forceinline__ long long thread_best(const float* row, int64_t vt, int64_t v0, long long below) {
  long long best = kEmpty;
  for (int64_t c = threadIdx.x; c < vt; c += kThreads) {
    const long long k = make_key(row[c], v0 + c);
    if (k < below && k > best) best = k;
  }
  return best;
}

__global__ void __launch_bounds__(kThreads) reduce_tile_kernel(
    const float* __restrict__ logits, int64_t vt, int64_t ld, int64_t v0,
    float* __restrict__ run_max, float* __restrict__ run_sum, float* __restrict__ top_vals,
    int64_t* __restrict__ top_ids, int top_n, const int64_t* __restrict__ targets,
    float* __restrict__ target_logits, const int64_t* __restrict__ ref_ids, int n_ref,
    float* __restrict__ ref_logits) {
  __shared__ long long s_top[kStreamCudaMaxTopN];
  __shared__ long long s_scratch[kWarps];
  __shared__ long long s_best;
  __shared__ float s_m[kWarps], s_s[kWarps];

  const int64_t r = blockIdx.x;
  const int tid = threadIdx.x;
  const float* row = logits + r * ld;

  // Gathers: each id appears in exactly one tile.
  if (tid == 0 && targets != nullptr) {
    const int64_t t = targets[r];
    if (t >= v0 && t < v0 + vt) target_logits[r] = row[t - v0];
  }
  if (ref_ids != nullptr) {
    for (int j = tid; j < n_ref; j += kThreads) {
      const int64_t id = ref_ids[r * n_ref + j];
      if (id >= v0 && id < v0 + vt) ref_logits[r * n_ref + j] = row[id - v0];
    }
  }
  if (tid < top_n) {
    const int64_t id = top_ids[r * top_n + tid];
    s_top[tid] = id < 0 ? kEmpty : make_key(top_vals[r * top_n + tid], id);
  }

  // One pass: per-thread online (max, sum) and best key.
  float m = -INFINITY, s = 0.f;
  long long best = kEmpty;
  for (int64_t c = tid; c < vt; c += kThreads) {
    const float x = row[c];
    if (x > m) {
      s = s * __expf(m - x) + 1.f;  // m = -inf gives exp(-inf) = 0
      m = x;
    } else if (x != -INFINITY) {
      s += __expf(x - m);
    }
    const long long k = make_key(x, v0 + c);
    best = k > best ? k : best;
  }
  warp_lse(m, s);
  if ((tid & 31) == 0) {
    s_m[tid >> 5] = m;
    s_s[tid >> 5] = s;
  }
  __syncthreads();  // also publishes s_top
  if (tid == 0) {
    float bm = run_max[r], bs = run_sum[r];
    for (int w = 0; w < kWarps; ++w) lse_merge(bm, bs, s_m[w], s_s[w]);
    run_max[r] = bm;
    run_sum[r] = bs;
  }

  // Top-N merge: at most top_n rounds, each inserting the block's best remaining key.
  for (int round = 0; round < top_n; ++round) {
    const long long b = block_max_key<kWarps>(best, s_scratch, &s_best);
    if (b <= s_top[top_n - 1]) break;  // uniform: every thread read the same shared values
    __syncthreads();                   // nobody still reads s_top[top_n - 1] below
    if (tid == 0) {
      int pos = top_n - 1;
      while (pos > 0 && s_top[pos - 1] < b) {
        s_top[pos] = s_top[pos - 1];
        --pos;
      }
      s_top[pos] = b;
    }
    if (best == b) best = thread_best(row, vt, v0, b);  // keys are unique: one owner
  }
  __syncthreads();
  if (tid < top_n) {
    const long long k = s_top[tid];
    top_vals[r * top_n + tid] = k == kEmpty ? -INFINITY : key_value(k);
    top_ids[r * top_n + tid] = k == kEmpty ? -1 : key_id(k);
  }
}

}  // namespace
}  // namespace stream_cuda

Status stream_reduce_tile_cuda(const float* logits, int64_t rows, int64_t vt, int64_t ld, int64_t v0,
                               float* run_max, float* run_sum, float* top_vals, int64_t* top_ids, int top_n,
                               const int64_t* targets, float* target_logits, const int64_t* ref_ids, int n_ref,
                               float* ref_logits, void* stream) {
  auto fail = [](const std::string& msg) {
    set_last_error("stream_reduce_tile_cuda: " + msg);
    return kInvalidArgument;
  };
  if (rows < 0 || vt < 1 || ld < vt) return fail("need rows >= 0, vt >= 1 and ld >= vt");
  if (top_n < 1 || top_n > kStreamCudaMaxTopN)
    return fail("top_n must be in [1, " + std::to_string(kStreamCudaMaxTopN) + "], got " + std::to_string(top_n));
  if (v0 < 0 || v0 + vt >= stream_cuda::kIdBias) return fail("vocabulary ids must lie in [0, 2^31 - 1)");
  if (rows > 0 && (!logits || !run_max || !run_sum || !top_vals || !top_ids))
    return fail("null logits or state pointer");
  if (targets && !target_logits) return fail("targets given without target_logits");
  if (ref_ids && (n_ref < 1 || !ref_logits)) return fail("ref_ids given without n_ref >= 1 and ref_logits");
  if (rows == 0) return kOk;
  if (rows > 2147483647LL) return fail("too many rows for one launch");
  stream_cuda::reduce_tile_kernel<<<static_cast<unsigned>(rows), stream_cuda::kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(
      logits, vt, ld, v0, run_max, run_sum, top_vals, top_ids, top_n, targets, target_logits, ref_ids,
      ref_ids ? n_ref : 0, ref_logits);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    set_last_error(std::string("stream_reduce_tile_cuda: launch failed: ") + cudaGetErrorString(err));
    return kCudaError;
  }
  return kOk;
}

}  // namespace pyquant

// pyquant embeddable C++ API: stream entry points (CUDA).
//
// The CUDA twin of stream_reduce_tile_cpu (pyquant/stream.h): same arguments, same state, same
// semantics, all pointers in device memory, work queued on `stream` (a cudaStream_t; null = the
// legacy default stream). Declared only in builds with CUDA (PYQUANT_WITH_CUDA).
#pragma once
#include <cstdint>

#include "pyquant/common.h"

namespace pyquant {

// Largest top_n the CUDA tile reducer supports.
constexpr int kStreamCudaMaxTopN = 64;

// State (initialised by the caller before the first tile): run_max = -inf, run_sum = 0,
// top_vals = -inf, top_ids = -1 (an empty slot: it sorts after every real id), target_logits
// and ref_logits left as they are until their id falls inside a tile.
//
// logits        [rows, vt] float32, row stride ld (>= vt); column j is vocabulary id v0 + j.
// run_max/sum   [rows]: running max and sum of exp(logit - run_max).
// top_vals/ids  [rows, top_n] (1 <= top_n <= 64), sorted descending, ties: lower id first (tiles
//               must arrive in increasing v0).
// targets       [rows] or null: target_logits[r] = logit of targets[r] when it lies in the tile.
// ref_ids       [rows, n_ref] or null: ref_logits[r, j] = logit of ref_ids[r, j] when in the tile.
// Handles -inf logits (an all -inf prefix leaves run_max = -inf, run_sum = 0, never NaN).
// Asynchronous: returns kOk once the kernel is queued, kInvalidArgument for bad arguments, or
// kCudaError if the launch failed; last_error() says why.
Status stream_reduce_tile_cuda(const float* logits, int64_t rows, int64_t vt, int64_t ld, int64_t v0,
                               float* run_max, float* run_sum, float* top_vals, int64_t* top_ids, int top_n,
                               const int64_t* targets, float* target_logits, const int64_t* ref_ids, int n_ref,
                               float* ref_logits, void* stream);

}  // namespace pyquant

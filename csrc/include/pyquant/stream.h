// pyquant embeddable C++ API: stream entry points (CPU).
//
// Streaming top-N log-softmax over an LM head: the caller computes the logits of one vocabulary
// tile (rows x vt, e.g. a GEMM block that stays in cache) and hands it to the tile reducer, which
// updates per-row running state in place. Walking all tiles in increasing vocabulary order, then
// finalising logsumexp = run_max + log(run_sum), gives the log-sum-exp, the top-N raw logits and
// ids, and the logits at the target and reference ids, without ever holding [rows, V].
#pragma once
#include "pyquant/common.h"

namespace pyquant {

// State (initialised by the caller before the first tile): run_max = -inf, run_sum = 0,
// top_vals = -inf, top_ids = -1 (an empty slot: it sorts after every real id), target_logits
// and ref_logits left as they are until their id falls inside a tile.
//
// logits        [rows, vt] float32, row stride ld (>= vt); column j is vocabulary id v0 + j.
// run_max/sum   [rows]: running max and sum of exp(logit - run_max).
// top_vals/ids  [rows, top_n], kept sorted descending, ties: lower id first (tiles must arrive in
//               increasing v0, so a strictly-greater insertion keeps the lower id).
// targets       [rows] or null: target_logits[r] = logit of targets[r] when it lies in the tile.
// ref_ids       [rows, n_ref] or null: ref_logits[r, j] = logit of ref_ids[r, j] when in the tile.
// num_threads   OpenMP threads over rows (<= 0: the OpenMP default).
// Handles -inf logits (an all -inf prefix leaves run_max = -inf, run_sum = 0, never NaN).
// Returns kOk, or kInvalidArgument with last_error() set.
Status stream_reduce_tile_cpu(const float* logits, int64_t rows, int64_t vt, int64_t ld, int64_t v0,
                              float* run_max, float* run_sum, float* top_vals, int64_t* top_ids, int top_n,
                              const int64_t* targets, float* target_logits, const int64_t* ref_ids, int n_ref,
                              float* ref_logits, int num_threads);

}  // namespace pyquant

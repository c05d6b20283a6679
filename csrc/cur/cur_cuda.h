// CUDA kernels of the cur family (cur.cu), over raw device pointers on a caller's stream.
// Same numerics as cur_kernels.h (one fmaf chain per score in the same order), so scores and the
// selected ids equal the CPU path bit for bit. Deterministic: no atomics.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"

namespace embkern::cur::cuda {

// Largest k the CUDA selection supports (the merge sorts 4096 keys per block: 2k of them).
constexpr int64_t kMaxK = 2048;

// Bytes of device scratch score_topk needs for these sizes.
size_t score_topk_workspace_bytes(int64_t nq, int64_t n, int64_t k);

// Exact top-k (largest first, ties to the lower index, NaN scores never selected, excluded ids
// never selected) of scores = C[nq, r] @ E[r, n] (etype as cur_kernels.h; scales for int8).
// ex_ids / ex_offsets: per query sorted unique excluded ids (ex_offsets == nullptr: none).
// *flag is set to 1 when some query has fewer than k selectable items. Never writes nq x n scores.
void score_topk(const float* C, int64_t nq, int64_t r, const void* E, int etype, const float* scales, int64_t n,
                const int64_t* ex_ids, const int64_t* ex_offsets, int64_t k, float* out_vals, int64_t* out_ids,
                int32_t* flag, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace embkern::cur::cuda

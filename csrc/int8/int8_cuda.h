// CUDA kernels of the int8 family (int8.cu), over raw device pointers on a caller's stream.
// Same semantics as int8_kernels.h; results equal the CPU path bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"

namespace embkern::int8::cuda {

// out = saturate_int8(rint(x / scale[d]) + zero_point[d]) in float32; *bad != 0 if x has NaN/Inf.
void quantize_f32(const float* x, int64_t n, int64_t dim, const float* scale, const float* zero_point, int8_t* out,
                  int32_t* bad, cudaStream_t stream);
// Largest k int8_topk supports (its shared-memory selection keeps k candidates per block).
int64_t int8_topk_max_k();
// Bytes of device scratch int8_topk needs for these sizes.
size_t int8_topk_workspace_bytes(int64_t nq, int64_t nb, int64_t k);
// Exact top-k (largest first, ties to the lower index) over all nb rows: dot (q_inv/db_inv null,
// exact int32 scores) or cosine ((float(dot) * db_inv[j]) * q_inv[q]). Deterministic; never
// materializes nq x nb scores.
void int8_topk(const int8_t* queries, int64_t nq, const int8_t* db, int64_t nb, int64_t dim, int64_t k,
               const float* q_inv, const float* db_inv, float* out_vals, int64_t* out_idx, void* workspace,
               size_t workspace_bytes, cudaStream_t stream);

}  // namespace embkern::int8::cuda

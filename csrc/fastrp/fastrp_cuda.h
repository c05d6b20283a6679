// CUDA kernels of the fastrp family (fastrp.cu), over raw device pointers on a caller's stream.
// Same semantics as fastrp_kernels.h (the argument structs are shared); deterministic, no atomics.
#pragma once
#include <cstdint>

#include "common/cuda_stream.h"
#include "fastrp/fastrp_kernels.h"

namespace embkern::fastrp::cuda {

// All rows of `a` (rows = number of rows), one warp per row.
void spmm(const SpmmArgs& a, int64_t rows, cudaStream_t stream);
// All rows of the initial matrix.
void init(const InitArgs& a, int64_t rows, cudaStream_t stream);
// deg[r] = sum of the row's weights (1 each without weights), in double;
// inv_deg[r] = deg > 0 ? 1/deg : 0; lscale[r] = deg > 0 ? deg^beta : 1 (both stored as fp32).
void degrees(const int64_t* indptr, const float* weights, int64_t rows, double beta, float* inv_deg, float* lscale,
             cudaStream_t stream);

}  // namespace embkern::fastrp::cuda

// CUDA kernels of the rbe family (rbe.cu), over raw device pointers on a caller's stream.
// Same semantics and roundings as rbe_kernels.h: scores equal the CPU path bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"

namespace embkern::rbe::cuda {

// 64-bit words of device scratch sdc_scores / sdc_keys need (bit planes of queries and database).
size_t sdc_workspace_words(int64_t nq, int64_t nb, int bits, int64_t plane_words);
// out[q * nb + j] = SDC score of query q and row j (db_inv_norm may be nullptr).
void sdc_scores(const uint8_t* q_codes, int64_t nq, const uint8_t* db_codes, int64_t nb, int64_t dim, int bits,
                const float* db_inv_norm, float* out, uint64_t* workspace, cudaStream_t stream);
// keys[q * nb + j] = (order-preserving bits of the score) << 32 | (2^32 - 1 - j): larger is better
// and, for equal scores, the lower index wins; unique, so any top-k of them is exact.
void sdc_keys(const uint8_t* q_codes, int64_t nq, const uint8_t* db_codes, int64_t nb, int64_t dim, int bits,
              const float* db_inv_norm, int64_t* keys, uint64_t* workspace, cudaStream_t stream);
// Inverse of the key encoding for n keys.
void sdc_decode_keys(const int64_t* keys, int64_t n, float* vals, int64_t* idx, cudaStream_t stream);

}  // namespace embkern::rbe::cuda

// CUDA kernels of the bits family (bits.cu), over raw device pointers on a caller's stream.
// Same semantics as bits_kernels.h; results equal the CPU path bit for bit.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"

namespace embkern::bits::cuda {

// out[i, :] = packbits(x[i, :] > threshold), rows of ceil(dim / 8) bytes.
void pack_bits_f32(const float* x, int64_t n, int64_t dim, float threshold, uint8_t* out, cudaStream_t stream);
// out[i, d] = bit d of codes[i], one byte (0 or 1) per element.
void unpack_bits(const uint8_t* codes, int64_t n, int64_t dim, uint8_t* out, cudaStream_t stream);
// out[q * nb + j] = popcount(queries[q] ^ db[j]).
void hamming_distance(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t nb, int64_t code_bytes,
                      int32_t* out, cudaStream_t stream);
// Bytes of device scratch hamming_topk needs for these sizes.
size_t hamming_topk_workspace_bytes(int64_t nq, int64_t nb, int64_t code_bytes, int64_t k);
// Exact top-k (smallest distance first, ties to the lower index) of every query over all nb rows;
// out_dist / out_idx are [nq, k]. Deterministic; never materializes nq x nb distances.
void hamming_topk(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t nb, int64_t code_bytes, int64_t k,
                  int32_t* out_dist, int64_t* out_idx, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace embkern::bits::cuda

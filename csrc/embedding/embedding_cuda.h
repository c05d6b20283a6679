// CUDA kernels of the embedding family (embedding.cu), over raw device pointers on a caller's stream.
// Same semantics and the same floating point operations in the same order as the CPU kernels
// (embedding_kernels.h), so results agree bit for bit. Structs hold device pointers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/cuda_stream.h"
#include "embedding/embedding_kernels.h"

namespace embkern::emb::cuda {

// Pooled forward (sum / mean): one warp per (feature, batch row) for combine concat (writes every
// element), per batch row for combine sum (adds: out must be zero-filled).
void forward_pooled(const ForwardArgs& a, cudaStream_t stream);
// pooling none: one warp per value; out zero-filled (probes a feature lacks stay 0).
void forward_none(const ForwardArgs& a, cudaStream_t stream);

// Per value i: slot_row[i] (grad row), scale[i] (accumulation type); per (value, probe) pair at
// pair_base[f] + (i - first value of f) * P_f + p: keys = row, codes = (i << probe_bits) | g.
// keys / codes are [2, P]: row 0 is filled here, row 1 is the sort's second buffer.
void prepare_pairs(const MuxLayout& L, int pooling, int probe_bits, bool f64, const void* psw, const int64_t* pair_base,
                   int64_t* slot_row, void* scale, uint64_t* keys, uint64_t* codes, cudaStream_t stream);
size_t sort_segments_temp_bytes(int64_t num_pairs, int bits);
// Stable radix sort of the pairs by row (CUB), leaving them in row 1 of keys / codes; unique rows,
// seg_start[U + 1], and U in *num_runs on the device. With read_count it returns U (waiting for the
// stream); without, it returns P, an upper bound for the launches below, which then stop at
// *num_runs (seg_start entries past U hold P).
int64_t sort_segments(uint64_t* keys, uint64_t* codes, int64_t num_pairs, int bits, void* temp, size_t temp_bytes,
                      int64_t* unique_rows, int64_t* seg_start, int64_t* num_runs, bool read_count,
                      cudaStream_t stream);
// The kernels below cover unique rows [0, max_u), or [0, *num_unique) when num_unique (a device
// pointer) is given.
// gsum[u, :] = the summed gradient of unique row u (a.out), one warp per row, in pair order.
void reduce_segments(const BackwardArgs& a, int64_t max_u, const int64_t* num_unique, cudaStream_t stream);
// The same sums applied at once as SGD to a.weight (a.lr), with no gsum.
void reduce_segments_sgd(const BackwardArgs& a, int64_t max_u, const int64_t* num_unique, cudaStream_t stream);
// a.mode kSgd / kRowwiseAdagrad on the rows unique_rows[u] with gradients gsum [u, D].
void apply_rows(const BackwardArgs& a, const int64_t* unique_rows, const void* gsum, int64_t max_u,
                const int64_t* num_unique, cudaStream_t stream);

}  // namespace embkern::emb::cuda

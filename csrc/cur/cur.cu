// CUDA fused score + top-k for the cur family (see cur_cuda.h).
//
// Pass 1 (score_chunk_kernel): a block owns kQ queries x kChunk columns. C's rows sit in shared
// memory; each thread keeps kQ x kCols accumulators and walks j = 0..r-1 (coalesced loads of E's
// rows, one fmaf per score and j, the CPU order). Each query's kChunk scores become 64-bit keys
//   key = ordered(score) << 32 | (2^32 - 1 - id)      (larger key = better, ties to the lower id)
// (0 = not selectable: NaN, excluded, past N), are bitonic-sorted in shared memory, and the best
// min(k, kChunk) are written out. Pass 2 (merge_kernel) repeatedly sorts groups of lists
// (kMerge keys per block) keeping the best k, until one list per query remains; pass 3 decodes.
// Only per-block candidate lists reach global memory, never the nq x n scores. No atomics.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cur/cur_cuda.h"

namespace embkern::cur::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCols = 4;                        // columns per thread in pass 1
constexpr int kChunk = kThreads * kCols;        // columns per block in pass 1
constexpr int kQ = 8;                           // queries per block in pass 1
constexpr int kMerge = 4096;                    // keys sorted per block in pass 2 (>= 2 * kMaxK)

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("score_topk CUDA: ") + what + ": " + cudaGetErrorString(e));
}

__device__ __forceinline__ uint64_t make_key(float v, int64_t id) {
  if (v != v) return 0;  // NaN: never selected
  if (v == 0.0f) v = 0.0f;  // -0 and +0 are equal scores (the CPU compares them equal)
  uint32_t u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return (uint64_t(u) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(id));
}

__device__ __forceinline__ float key_value(uint64_t key) {
  uint32_t u = uint32_t(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  return __uint_as_float(u);
}

__device__ __forceinline__ int64_t key_id(uint64_t key) { return int64_t(0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu)); }

__device__ __forceinline__ float load_e(const void* E, int etype, int64_t idx) {
  if (etype == 1) return __uint_as_float(uint32_t(static_cast<const uint16_t*>(E)[idx]) << 16);
  if (etype == 2) return float(static_cast<const int8_t*>(E)[idx]);
  return static_cast<const float*>(E)[idx];
}

// Sorts s[0..m) descending (m a power of two) with the whole block.
__device__ void bitonic_sort_desc(uint64_t* s, int m) {
  for (int size = 2; size <= m; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < m / 2; i += blockDim.x) {
        const int lo = 2 * stride * (i / stride) + (i % stride), hi = lo + stride;
        const bool desc = (lo & size) == 0;
        const uint64_t a = s[lo], b = s[hi];
        if ((a < b) == desc) {
          s[lo] = b;
          s[hi] = a;
        }
      }
      __syncthreads();
    }
  }
}

// Pass 1. Block: queries [qg*kQ, +kQ) x columns [chunk*kChunk, +kChunk). Output lists of length L.
__global__ void score_chunk_kernel(const float* __restrict__ C, int64_t nq, int64_t r, const void* __restrict__ E,
                                   int etype, const float* __restrict__ scales, int64_t n,
                                   const int64_t* __restrict__ ex_ids, const int64_t* __restrict__ ex_offsets,
                                   int64_t nqg, int64_t nchunks, int L, uint64_t* __restrict__ out) {
  extern __shared__ unsigned char smem[];
  uint64_t* keys = reinterpret_cast<uint64_t*>(smem);                // kChunk keys
  float* cs = reinterpret_cast<float*>(smem + kChunk * sizeof(uint64_t));  // kQ x r
  const int64_t qg = int64_t(blockIdx.x) % nqg, chunk = int64_t(blockIdx.x) / nqg;
  const int64_t q0 = qg * kQ, col0 = chunk * kChunk;
  const int nqb = int(nq - q0 < kQ ? nq - q0 : kQ);
  for (int64_t i = threadIdx.x; i < int64_t(kQ) * r; i += blockDim.x) {
    const int64_t q = i / r;
    cs[i] = q < nqb ? C[(q0 + q) * r + i % r] : 0.0f;
  }
  __syncthreads();
  float acc[kQ][kCols];
#pragma unroll
  for (int q = 0; q < kQ; ++q)
#pragma unroll
    for (int c = 0; c < kCols; ++c) acc[q][c] = 0.0f;
  int64_t col[kCols];
#pragma unroll
  for (int c = 0; c < kCols; ++c) col[c] = col0 + threadIdx.x + c * kThreads;
  for (int64_t j = 0; j < r; ++j) {
    float e[kCols];
#pragma unroll
    for (int c = 0; c < kCols; ++c) e[c] = col[c] < n ? load_e(E, etype, j * n + col[c]) : 0.0f;
#pragma unroll
    for (int q = 0; q < kQ; ++q) {
      const float cq = cs[q * r + j];
#pragma unroll
      for (int c = 0; c < kCols; ++c) acc[q][c] = fmaf(cq, e[c], acc[q][c]);
    }
  }
  if (etype == 2) {
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      const float sc = col[c] < n ? scales[col[c]] : 0.0f;
#pragma unroll
      for (int q = 0; q < kQ; ++q) acc[q][c] = acc[q][c] * sc;
    }
  }
#pragma unroll
  for (int q = 0; q < kQ; ++q) {
    if (q >= nqb) break;  // uniform across the block
#pragma unroll
    for (int c = 0; c < kCols; ++c)
      keys[threadIdx.x + c * kThreads] = col[c] < n ? make_key(acc[q][c], col[c]) : 0;
    __syncthreads();
    if (ex_offsets != nullptr) {
      // This chunk's excluded ids: a binary search for the first id >= col0, then a strided sweep.
      const int64_t* b = ex_ids + ex_offsets[q0 + q];
      const int64_t* e = ex_ids + ex_offsets[q0 + q + 1];
      int64_t lo = 0, hi = e - b;
      while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (b[mid] < col0) lo = mid + 1; else hi = mid;
      }
      for (int64_t i = lo + threadIdx.x; i < e - b && b[i] < col0 + kChunk; i += blockDim.x) keys[b[i] - col0] = 0;
      __syncthreads();
    }
    bitonic_sort_desc(keys, kChunk);
    uint64_t* dst = out + ((q0 + q) * nchunks + chunk) * L;
    for (int i = threadIdx.x; i < L; i += blockDim.x) dst[i] = keys[i];
    __syncthreads();
  }
}

// Pass 2. Per query: nl lists of length L in `in` -> ceil(nl / G) lists of length L2 in `out`.
__global__ void merge_kernel(const uint64_t* __restrict__ in, int64_t nl, int L, int G, int64_t nl2, int L2,
                             uint64_t* __restrict__ out) {
  __shared__ uint64_t keys[kMerge];
  const int64_t q = int64_t(blockIdx.x) / nl2, g = int64_t(blockIdx.x) % nl2;
  const int64_t first = g * G, lists = nl - first < G ? nl - first : int64_t(G);
  const uint64_t* src = in + (q * nl + first) * L;
  for (int i = threadIdx.x; i < kMerge; i += blockDim.x) keys[i] = i < lists * L ? src[i] : 0;
  __syncthreads();
  bitonic_sort_desc(keys, kMerge);
  uint64_t* dst = out + (q * nl2 + g) * L2;
  for (int i = threadIdx.x; i < L2; i += blockDim.x) dst[i] = keys[i];
}

// Pass 3: the first k keys of each query's last list -> values and ids; flag when a key is 0.
__global__ void decode_kernel(const uint64_t* __restrict__ in, int64_t nq, int L, int64_t k, float* __restrict__ vals,
                              int64_t* __restrict__ ids, int32_t* __restrict__ flag) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nq * k) return;
  const int64_t q = i / k, j = i % k;
  const uint64_t key = in[q * L + j];
  if (key == 0) {
    *flag = 1;  // every writer stores the same value: deterministic
    vals[i] = 0.0f;
    ids[i] = -1;
    return;
  }
  vals[i] = key_value(key);
  ids[i] = key_id(key);
}

struct Plan {
  int64_t nqg, nchunks;
  int L0;
  size_t keys_a, keys_b;  // sizes (in keys) of the two ping-pong buffers
};

Plan make_plan(int64_t nq, int64_t n, int64_t k) {
  Plan p{};
  p.nqg = (nq + kQ - 1) / kQ;
  p.nchunks = (n + kChunk - 1) / kChunk;
  p.L0 = int(std::min<int64_t>(k, kChunk));
  p.keys_a = size_t(nq) * size_t(p.nchunks) * size_t(p.L0);
  size_t b = 0;
  int64_t nl = p.nchunks;
  int L = p.L0;
  while (nl > 1) {
    const int G = kMerge / L;
    const int64_t nl2 = (nl + G - 1) / G;
    const int L2 = int(std::min<int64_t>(k, int64_t(G) * L));
    b = std::max(b, size_t(nq) * size_t(nl2) * size_t(L2));
    nl = nl2;
    L = L2;
  }
  p.keys_a = p.keys_b = std::max(b, p.keys_a);  // the buffers swap roles level by level
  return p;
}

}  // namespace

size_t score_topk_workspace_bytes(int64_t nq, int64_t n, int64_t k) {
  const Plan p = make_plan(nq, n, k);
  return (p.keys_a + p.keys_b) * sizeof(uint64_t);
}

void score_topk(const float* C, int64_t nq, int64_t r, const void* E, int etype, const float* scales, int64_t n,
                const int64_t* ex_ids, const int64_t* ex_offsets, int64_t k, float* out_vals, int64_t* out_ids,
                int32_t* flag, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (nq == 0 || k == 0) return;
  const Plan p = make_plan(nq, n, k);
  if (workspace_bytes < (p.keys_a + p.keys_b) * sizeof(uint64_t)) throw std::runtime_error("score_topk CUDA: workspace too small");
  if (p.nqg * p.nchunks > int64_t(0x7FFFFFFF)) throw std::runtime_error("score_topk CUDA: too many blocks (B x N too large)");
  uint64_t* buf[2] = {static_cast<uint64_t*>(workspace), static_cast<uint64_t*>(workspace) + p.keys_a};
  const size_t smem = kChunk * sizeof(uint64_t) + size_t(kQ) * size_t(r) * sizeof(float);
  if (smem > 48 * 1024) check(cudaFuncSetAttribute(score_chunk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)), "shared memory for C (r too large)");
  score_chunk_kernel<<<unsigned(p.nqg * p.nchunks), kThreads, smem, stream>>>(C, nq, r, E, etype, scales, n, ex_ids,
                                                                             ex_offsets, p.nqg, p.nchunks, p.L0, buf[0]);
  check(cudaGetLastError(), "score kernel launch");
  int64_t nl = p.nchunks;
  int L = p.L0, cur = 0;
  while (nl > 1) {
    const int G = kMerge / L;
    const int64_t nl2 = (nl + G - 1) / G;
    const int L2 = int(std::min<int64_t>(k, int64_t(G) * L));
    merge_kernel<<<unsigned(nq * nl2), kThreads, 0, stream>>>(buf[cur], nl, L, G, nl2, L2, buf[1 - cur]);
    check(cudaGetLastError(), "merge kernel launch");
    cur = 1 - cur;
    nl = nl2;
    L = L2;
  }
  const int64_t total = nq * k;
  decode_kernel<<<unsigned((total + 255) / 256), 256, 0, stream>>>(buf[cur], nq, L, k, out_vals, out_ids, flag);
  check(cudaGetLastError(), "decode kernel launch");
}

}  // namespace embkern::cur::cuda

// CUDA kernels of the int8 family: quantization, and exact int8 top-k with __dp4a and a
// deterministic per-block selection. No torch headers (see int8_cuda.h).
//
// Top-k: pass 1 gives each block one query and one chunk of database rows. Threads compute dot
// products with __dp4a (4 int8 products per instruction, exact int32), keep only rows that beat
// the block's current k-th best (a strict bar: rows arrive in increasing index order, so an equal
// score is never better), append them to a shared-memory buffer, and a bitonic sort by (score
// descending, index ascending) folds the buffer into the block's sorted top-k when it fills.
// Pass 2 folds every chunk's top-k of a query the same way. The key is total (no equal keys), so
// the result does not depend on the order threads appended candidates: deterministic run to run
// and equal to the CPU answer.
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "int8/int8_cuda.h"

namespace embkern::int8::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("embkern int8 CUDA: ") + what + ": " + cudaGetErrorString(e));
}

constexpr int kThreads = 256;
constexpr int kCap = 2048;     // shared candidate slots: top-k (<= kMaxK) + a buffer of >= 1024
constexpr int kMaxK = 1024;
constexpr int64_t kChunkRows = 16384;

__global__ void quantize_kernel(const float* __restrict__ x, int64_t total, int64_t dim, const float* __restrict__ scale,
                                const float* __restrict__ zero_point, int8_t* __restrict__ out, int32_t* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    const int64_t d = i % dim;
    if (!isfinite(v)) *bad = 1;  // every writer stores the same value
    float r = rintf(__fdiv_rn(v, scale[d])) + zero_point[d];  // IEEE division, round half to even
    r = fminf(fmaxf(r, -128.f), 127.f);
    out[i] = int8_t(r);
  }
}

template <typename T>
struct Lowest;
template <>
struct Lowest<int32_t> {
  __device__ static int32_t value() { return INT_MIN; }
};
template <>
struct Lowest<float> {
  __device__ static float value() { return -FLT_MAX; }
};

template <typename T>
__device__ __forceinline__ bool better(T a, int64_t ia, T b, int64_t ib) {
  return a > b || (a == b && ia < ib);
}

// Shared-memory top-k of one query: slots [0, kept) sorted best first, [kept, kept + nbuf) new.
template <typename T>
struct BlockTopK {
  T* s;
  int64_t* id;
  int* kept;
  int* nbuf;
  int k;

  // Sorts slots [0, k + nbuf) best first (bitonic over a power of two; the unused slots
  // [kept, k) and the padding hold worst keys) and keeps min(k, kept + nbuf). All threads of the
  // block call it.
  __device__ void fold() {
    __syncthreads();
    const int n = k + *nbuf, live = *kept + *nbuf;
    int p = 1;
    while (p < n) p <<= 1;
    for (int i = *kept + threadIdx.x; i < k; i += blockDim.x) {
      s[i] = Lowest<T>::value();
      id[i] = INT64_MAX;
    }
    for (int i = n + threadIdx.x; i < p; i += blockDim.x) {
      s[i] = Lowest<T>::value();
      id[i] = INT64_MAX;
    }
    __syncthreads();
    for (int size = 2; size <= p; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int i = threadIdx.x; i < p; i += blockDim.x) {
          const int j = i ^ stride;
          if (j > i) {
            const bool up = (i & size) == 0;  // this pair's half sorts best first
            const bool swap = up ? better(s[j], id[j], s[i], id[i]) : better(s[i], id[i], s[j], id[j]);
            if (swap) {
              const T ts = s[i];
              s[i] = s[j];
              s[j] = ts;
              const int64_t ti = id[i];
              id[i] = id[j];
              id[j] = ti;
            }
          }
        }
        __syncthreads();
      }
    }
    if (threadIdx.x == 0) {
      *kept = live < k ? live : k;
      *nbuf = 0;
    }
    __syncthreads();
  }

  // The bar a new candidate must beat (strictly); meaningful between folds.
  __device__ T bar() const { return *kept == k ? s[k - 1] : Lowest<T>::value(); }

  __device__ void append(T v, int64_t i) {
    const int pos = atomicAdd(nbuf, 1);  // order does not matter: fold sorts by a total key
    s[k + pos] = v;
    id[k + pos] = i;
  }
};

// One block per (query, chunk): scores rows [c0, c1) and writes the chunk's top-k (padded with
// worst keys when the chunk has fewer than k rows) to part_s / part_i [nq, nchunks, k].
template <typename T, bool Cos>
__global__ void partial_topk_kernel(const int8_t* __restrict__ queries, const int8_t* __restrict__ db, int64_t nb,
                                    int64_t dim, int k, int64_t nchunks, const float* __restrict__ q_inv,
                                    const float* __restrict__ db_inv, T* part_s, int64_t* part_i) {
  extern __shared__ unsigned char smem[];
  const int64_t q = blockIdx.x, chunk = blockIdx.y;
  const int words = int((dim + 3) / 4);
  int64_t* sid = reinterpret_cast<int64_t*>(smem);
  T* ss = reinterpret_cast<T*>(sid + kCap);
  int* qw = reinterpret_cast<int*>(ss + kCap);
  __shared__ int kept, nbuf;
  // The query as 32-bit words of 4 int8 values, zero padded.
  for (int w = threadIdx.x; w < words; w += blockDim.x) {
    uint32_t v = 0;
    for (int b = 0; b < 4; ++b) {
      const int64_t d = int64_t(w) * 4 + b;
      if (d < dim) v |= uint32_t(uint8_t(queries[q * dim + d])) << (8 * b);
    }
    qw[w] = int(v);
  }
  if (threadIdx.x == 0) kept = nbuf = 0;
  __syncthreads();
  BlockTopK<T> top{ss, sid, &kept, &nbuf, k};
  const int64_t c0 = chunk * nb / nchunks, c1 = (chunk + 1) * nb / nchunks;
  const bool aligned = (dim % 4) == 0 && (reinterpret_cast<uintptr_t>(db) % 4) == 0;  // 32-bit row loads
  const bool vec16 = (dim % 16) == 0 && (reinterpret_cast<uintptr_t>(db) % 16) == 0;
  const float qi = Cos ? q_inv[q] : 0.f;
  for (int64_t base = c0; base < c1; base += blockDim.x) {
    if (nbuf > kCap - k - int(blockDim.x)) top.fold();  // room for this tile's candidates
    const T bar = top.bar();
    const int64_t r = base + threadIdx.x;
    if (r < c1) {
      const int8_t* row = db + r * dim;
      int acc = 0;
      if (vec16) {  // 16-byte loads: a quarter of the load instructions
        const int4* r4 = reinterpret_cast<const int4*>(row);
        for (int w = 0; w < words; w += 4) {
          const int4 v = __ldg(r4 + w / 4);
          acc = __dp4a(v.x, qw[w], acc);
          acc = __dp4a(v.y, qw[w + 1], acc);
          acc = __dp4a(v.z, qw[w + 2], acc);
          acc = __dp4a(v.w, qw[w + 3], acc);
        }
      } else if (aligned) {
        const int* rw = reinterpret_cast<const int*>(row);
        for (int w = 0; w < words; ++w) acc = __dp4a(rw[w], qw[w], acc);
      } else {
        for (int w = 0; w < words; ++w) {
          uint32_t v = 0;
          for (int b = 0; b < 4; ++b) {
            const int64_t d = int64_t(w) * 4 + b;
            if (d < dim) v |= uint32_t(uint8_t(row[d])) << (8 * b);
          }
          acc = __dp4a(int(v), qw[w], acc);
        }
      }
      T score;
      if constexpr (Cos)
        score = __fmul_rn(__fmul_rn(__int2float_rn(acc), db_inv[r]), qi);
      else
        score = acc;
      if (score > bar) top.append(score, r);
    }
    __syncthreads();
  }
  top.fold();
  T* os = part_s + (q * nchunks + chunk) * k;
  int64_t* oi = part_i + (q * nchunks + chunk) * k;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    os[j] = j < kept ? ss[j] : Lowest<T>::value();
    oi[j] = j < kept ? sid[j] : INT64_MAX;
  }
}

// One block per query: folds the nchunks partial lists into the final top-k (float scores).
template <typename T>
__global__ void merge_topk_kernel(const T* part_s, const int64_t* part_i, int k, int64_t nchunks, float* out_s,
                                  int64_t* out_i) {
  extern __shared__ unsigned char smem[];
  const int64_t q = blockIdx.x;
  int64_t* sid = reinterpret_cast<int64_t*>(smem);
  T* ss = reinterpret_cast<T*>(sid + kCap);
  __shared__ int kept, nbuf;
  if (threadIdx.x == 0) kept = nbuf = 0;
  __syncthreads();
  BlockTopK<T> top{ss, sid, &kept, &nbuf, k};
  const int64_t total = nchunks * k;
  const int room = kCap - k;  // >= 1024 >= blockDim
  for (int64_t base = 0; base < total; base += room) {
    const int64_t n = total - base < room ? total - base : room;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      ss[k + j] = part_s[q * total + base + j];
      sid[k + j] = part_i[q * total + base + j];
    }
    if (threadIdx.x == 0) nbuf = int(n);
    top.fold();
  }
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    out_s[q * k + j] = float(ss[j]);  // int32 -> float32 rounds to nearest, as on the CPU
    out_i[q * k + j] = sid[j];
  }
}

int64_t num_chunks(int64_t nq, int64_t nb, int64_t k) {
  int64_t chunks = (nb + kChunkRows - 1) / kChunkRows;
  // Enough blocks to fill the GPU when there are few queries, and a bounded workspace (<= 1 GiB).
  const int64_t budget = (int64_t(1) << 30) / (nq * k * 12);
  if (chunks > budget) chunks = budget;
  if (chunks > 65535) chunks = 65535;  // gridDim.y
  if (chunks < 1) chunks = 1;
  return chunks;
}

template <typename T, bool Cos>
void run_topk(const int8_t* queries, int64_t nq, const int8_t* db, int64_t nb, int64_t dim, int64_t k,
              const float* q_inv, const float* db_inv, float* out_vals, int64_t* out_idx, void* workspace,
              cudaStream_t stream) {
  const int64_t chunks = num_chunks(nq, nb, k);
  T* part_s = static_cast<T*>(workspace);
  int64_t* part_i = reinterpret_cast<int64_t*>(static_cast<char*>(workspace) + (nq * chunks * k * sizeof(T) + 15) / 16 * 16);
  const size_t words = size_t((dim + 3) / 4);
  const size_t smem1 = kCap * (sizeof(int64_t) + sizeof(T)) + words * sizeof(int);
  const size_t smem2 = kCap * (sizeof(int64_t) + sizeof(T));
  if (smem1 > 48 * 1024)
    check(cudaFuncSetAttribute(partial_topk_kernel<T, Cos>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem1)),
          "shared memory for the query");
  for (int64_t q0 = 0; q0 < nq; q0 += 65535) {  // queries in launches of at most 65535 blocks
    const int64_t nqb = nq - q0 < 65535 ? nq - q0 : 65535;
    partial_topk_kernel<T, Cos><<<dim3(unsigned(nqb), unsigned(chunks)), kThreads, smem1, stream>>>(
        queries + q0 * dim, db, nb, dim, int(k), chunks, q_inv ? q_inv + q0 : nullptr, db_inv,
        part_s + q0 * chunks * k, part_i + q0 * chunks * k);
    check(cudaGetLastError(), "partial top-k launch");
    merge_topk_kernel<T><<<unsigned(nqb), kThreads, smem2, stream>>>(part_s + q0 * chunks * k, part_i + q0 * chunks * k,
                                                                    int(k), chunks, out_vals + q0 * k, out_idx + q0 * k);
    check(cudaGetLastError(), "merge top-k launch");
  }
}

}  // namespace

void quantize_f32(const float* x, int64_t n, int64_t dim, const float* scale, const float* zero_point, int8_t* out,
                  int32_t* bad, cudaStream_t stream) {
  const int64_t total = n * dim;
  if (total == 0) return;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  quantize_kernel<<<unsigned(blocks < 65535 ? blocks : 65535), kThreads, 0, stream>>>(x, total, dim, scale, zero_point,
                                                                                      out, bad);
  check(cudaGetLastError(), "quantize launch");
}

size_t int8_topk_workspace_bytes(int64_t nq, int64_t nb, int64_t k) {
  if (nq == 0) return 0;
  const int64_t chunks = num_chunks(nq, nb, k);
  const size_t n = size_t(nq * chunks * k);
  return (n * 4 + 15) / 16 * 16 + n * 8;  // scores (int32 or float) + int64 ids
}

int64_t int8_topk_max_k() { return kMaxK; }

void int8_topk(const int8_t* queries, int64_t nq, const int8_t* db, int64_t nb, int64_t dim, int64_t k,
               const float* q_inv, const float* db_inv, float* out_vals, int64_t* out_idx, void* workspace,
               size_t /*workspace_bytes*/, cudaStream_t stream) {
  if (nq == 0) return;
  if (q_inv)
    run_topk<float, true>(queries, nq, db, nb, dim, k, q_inv, db_inv, out_vals, out_idx, workspace, stream);
  else
    run_topk<int32_t, false>(queries, nq, db, nb, dim, k, nullptr, nullptr, out_vals, out_idx, workspace, stream);
}

}  // namespace embkern::int8::cuda

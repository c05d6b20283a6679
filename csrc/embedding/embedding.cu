// CUDA kernels of the embedding family: multiplexed hashed embedding bags (DESIGN 3.1).
// Raw device pointers and a caller's stream only (no torch headers). Every output element is
// computed with the same operations in the same order as the CPU kernels (embedding_impl.h):
// sequential sums over a bag's values, fma where a scale applies, one division for mean; the
// backward sums each unique row's pairs in the order of a stable radix sort (CUB) of pairs laid
// out exactly as on the CPU. So CPU and CUDA agree bit for bit, and runs are deterministic (no
// float atomics).
//
// Forward: one warp per (feature, batch row) (pooled, concat), per batch row (pooled, sum) or per value
// (pooling none); lane l owns the columns l, l + 32, ... of the row (coalesced 128-byte loads of
// each weight row); row indices are hashed by lane j for value j of the bag and broadcast by shuffle.
// Backward: pairs (row, code) -> CUB stable radix sort on the row bits -> run-length encode ->
// one warp per unique row sums its gradient slots in pair order -> write (sparse / dense), apply SGD
// right there, or apply rowwise Adagrad once per row in a second kernel (it needs the row's norm).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cub/cub.cuh>
#include <stdexcept>
#include <string>

#include "common/hash.h"
#include "embedding/embedding_cuda.h"

namespace embkern::emb::cuda {
namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error("embkern embedding (CUDA): " + msg); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(e));
}
void check_launch(const char* what) { check(cudaGetLastError(), what); }

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;
constexpr int kMaxCols = 8;  // columns per lane per pass (D <= 256 in one pass)

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const bf16_t* p) { return __uint_as_float(uint32_t(p->x) << 16); }
__device__ __forceinline__ float load_acc(const f16_t* p) { return __half2float(__ushort_as_half(p->x)); }

__device__ __forceinline__ void store_w(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_w(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_w(bf16_t* p, float v) {  // round to nearest even, as f32_to_bf16
  const uint32_t u = __float_as_uint(v);
  p->x = (u & 0x7fffffffu) > 0x7f800000u ? uint16_t((u >> 16) | 0x40u)
                                          : uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ void store_w(f16_t* p, float v) { p->x = __half_as_ushort(__float2half_rn(v)); }

__device__ __forceinline__ float fma_acc(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_acc(double a, double b, double c) { return __fma_rn(a, b, c); }
__device__ __forceinline__ float add_acc(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_acc(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float div_acc(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_acc(double a, double b) { return __ddiv_rn(a, b); }

__device__ __forceinline__ uint64_t dev_value_bits(const MuxLayout& L, int64_t i) {
  return L.values_i32 ? uint64_t(int64_t(static_cast<const int32_t*>(L.values)[i]))
                      : uint64_t(static_cast<const int64_t*>(L.values)[i]);
}
__device__ __forceinline__ int64_t dev_probe_row(uint64_t premixed, uint64_t key, int64_t base, int64_t size) {
  return base + int64_t(hash_to_range(mix64(premixed ^ key), uint64_t(size)));
}

// Pools the bag [s, e) of probe g over columns [d0, d0 + 32 * COLS) into out (= or +=). COLS, the
// columns per lane in one pass, only splits the columns: each column's sum is the same.
template <class T, class A, int COLS = kMaxCols>
__device__ __forceinline__ void warp_pool(const ForwardArgs& a, int64_t s, int64_t e, int64_t g, int64_t d0,
                                          A* out_row, bool accumulate, int lane) {
  const T* w = static_cast<const T*>(a.weight);
  const A* psw = static_cast<const A*>(a.psw);
  const int64_t D = a.dim;
  const MuxLayout& L = a.L;
  A acc[COLS];
#pragma unroll
  for (int k = 0; k < COLS; ++k) acc[k] = A(0);
  for (int64_t c = s; c < e; c += kWarp) {
    // lane j hashes value c + j; the warp then walks the chunk in order
    int64_t my_row = 0;
    if (c + lane < e) my_row = dev_probe_row(mix64(dev_value_bits(L, c + lane)), L.keys[g], L.row_base[g], L.row_size[g]);
    const int n = int(e - c < kWarp ? e - c : int64_t(kWarp));
    // unrolled so that several rows' loads are in flight before the first add (the adds stay in order)
#pragma unroll 4
    for (int j = 0; j < n; ++j) {
      const int64_t r = __shfl_sync(0xffffffffu, my_row, j);
      const T* wr = w + r * D;
      if (psw) {
        const A sc = psw[c + j];
#pragma unroll
        for (int k = 0; k < COLS; ++k) {
          const int64_t d = d0 + lane + k * kWarp;
          if (d < D) acc[k] = fma_acc(sc, A(load_acc(wr + d)), acc[k]);
        }
      } else {
#pragma unroll
        for (int k = 0; k < COLS; ++k) {
          const int64_t d = d0 + lane + k * kWarp;
          if (d < D) acc[k] = add_acc(acc[k], A(load_acc(wr + d)));
        }
      }
    }
  }
  const bool mean = a.pooling == kPoolMean && e > s;
#pragma unroll
  for (int k = 0; k < COLS; ++k) {
    const int64_t d = d0 + lane + k * kWarp;
    if (d < D) {
      A v = mean ? div_acc(acc[k], A(e - s)) : acc[k];
      out_row[d] = accumulate ? add_acc(out_row[d], v) : v;
    }
  }
}

template <class T, class A>
__global__ void forward_pooled_kernel(ForwardArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const MuxLayout& L = a.L;
  if (b >= L.batch) return;
  A* out = static_cast<A*>(a.out) + b * a.out_cols;
  const bool concat = a.combine == kCombineConcat;
  for (int64_t f = 0; f < L.num_features; ++f) {
    const int64_t s = L.offsets[f * L.batch + b], e = L.offsets[f * L.batch + b + 1];
    for (int64_t g = L.probe_offsets[f]; g < L.probe_offsets[f + 1]; ++g)
      for (int64_t d0 = 0; d0 < a.dim; d0 += kWarp * kMaxCols)
        warp_pool<T, A>(a, s, e, g, d0, out + (concat ? g * a.dim : 0), !concat, lane);
  }
}

// Combine concat: one warp per (feature, batch row), B * F warps rather than B, so that enough rows
// are in flight to cover memory latency; consecutive warps take consecutive bags of a feature
// (adjacent offsets and values). Each probe's slice is pooled exactly as forward_pooled_kernel pools
// it, COLS columns per lane (the fewest registers for D).
template <class T, class A, int COLS>
__global__ void forward_concat_kernel(ForwardArgs a) {
  const int lane = threadIdx.x % kWarp;
  const MuxLayout& L = a.L;
  const int64_t item = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (item >= L.num_features * L.batch) return;
  const int64_t f = item / L.batch, b = item % L.batch;
  const int64_t s = L.offsets[item], e = L.offsets[item + 1];
  A* out = static_cast<A*>(a.out) + b * a.out_cols;
  const int64_t g_end = L.probe_offsets[f + 1];
  for (int64_t g = L.probe_offsets[f]; g < g_end; ++g)
    for (int64_t d0 = 0; d0 < a.dim; d0 += kWarp * COLS)
      warp_pool<T, A, COLS>(a, s, e, g, d0, out + g * a.dim, false, lane);
}

template <class T, class A>
__global__ void forward_none_kernel(ForwardArgs a) {
  const int lane = threadIdx.x % kWarp;
  const int64_t i = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const MuxLayout& L = a.L;
  if (i >= L.n) return;
  int64_t f = 0;  // the feature of value i: the last f with offsets[f * B] <= i
  while (f + 1 < L.num_features && L.offsets[(f + 1) * L.batch] <= i) ++f;
  const bool concat = a.combine == kCombineConcat;
  A* out = static_cast<A*>(a.out) + i * a.out_cols;
  for (int64_t g = L.probe_offsets[f]; g < L.probe_offsets[f + 1]; ++g) {
    const int64_t p = g - L.probe_offsets[f];
    for (int64_t d0 = 0; d0 < a.dim; d0 += kWarp * kMaxCols)
      warp_pool<T, A>(a, i, i + 1, g, d0, out + (concat ? p * a.dim : 0), !concat && p > 0, lane);
  }
}

template <template <class, class> class K>
void launch_forward(const ForwardArgs& a, int64_t items, cudaStream_t stream, const char* what) {
  if (items == 0) return;
  const dim3 grid(unsigned((items + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarp * kWarpsPerBlock);
  switch (a.wtype) {
    case WType::F32: K<float, float>::launch(grid, block, stream, a); break;
    case WType::BF16: K<bf16_t, float>::launch(grid, block, stream, a); break;
    case WType::F16: K<f16_t, float>::launch(grid, block, stream, a); break;
    case WType::F64: K<double, double>::launch(grid, block, stream, a); break;
  }
  check_launch(what);
}

template <class T, class A>
struct PooledLaunch {
  static void launch(dim3 g, dim3 b, cudaStream_t s, const ForwardArgs& a) { forward_pooled_kernel<T, A><<<g, b, 0, s>>>(a); }
};
template <class T, class A>
struct ConcatLaunch {
  static void launch(dim3 g, dim3 b, cudaStream_t s, const ForwardArgs& a) {
    if (a.dim <= kWarp)
      forward_concat_kernel<T, A, 1><<<g, b, 0, s>>>(a);
    else if (a.dim <= 2 * kWarp)
      forward_concat_kernel<T, A, 2><<<g, b, 0, s>>>(a);
    else if (a.dim <= 4 * kWarp)
      forward_concat_kernel<T, A, 4><<<g, b, 0, s>>>(a);
    else
      forward_concat_kernel<T, A, kMaxCols><<<g, b, 0, s>>>(a);
  }
};
template <class T, class A>
struct NoneLaunch {
  static void launch(dim3 g, dim3 b, cudaStream_t s, const ForwardArgs& a) { forward_none_kernel<T, A><<<g, b, 0, s>>>(a); }
};

// ---- backward ---------------------------------------------------------------------------------

template <class A>
__global__ void prepare_pairs_kernel(MuxLayout L, int pooling, int probe_bits, const A* psw, const int64_t* pair_base,
                                     int64_t* slot_row, A* scale, uint64_t* keys, uint64_t* codes) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // bag j = f * B + b
  if (j >= L.num_features * L.batch) return;
  const int64_t f = j / L.batch, b = j % L.batch, s = L.offsets[j], e = L.offsets[j + 1];
  const A inv = e > s ? A(1) / A(e - s) : A(0);
  const int64_t g0 = L.probe_offsets[f], P_f = L.probe_offsets[f + 1] - g0, first = L.offsets[f * L.batch];
  for (int64_t i = s; i < e; ++i) {
    slot_row[i] = pooling == kPoolNone ? i : b;
    scale[i] = psw ? psw[i] : (pooling == kPoolMean ? inv : A(1));
    const uint64_t pm = mix64(dev_value_bits(L, i));
    const int64_t at = pair_base[f] + (i - first) * P_f;
    for (int64_t q = 0; q < P_f; ++q) {
      const int64_t g = g0 + q;
      keys[at + q] = uint64_t(dev_probe_row(pm, L.keys[g], L.row_base[g], L.row_size[g]));
      codes[at + q] = (uint64_t(i) << probe_bits) | uint64_t(g);
    }
  }
}

// SGD: the summed gradient updates its row at once (w = fma(-lr, g, w), as apply_rows_kernel does)
// instead of going through gsum: the segment's row is rows[p0].
template <class T, class A, bool SGD>
__global__ void reduce_segments_kernel(BackwardArgs a, int64_t max_u, const int64_t* num_unique) {
  const int lane = threadIdx.x % kWarp;
  const int64_t u = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (u >= (num_unique ? *num_unique : max_u)) return;
  const A* grad = static_cast<const A*>(a.grad);
  const A* scale = static_cast<const A*>(a.scale);
  const uint64_t gmask = (uint64_t(1) << a.probe_bits) - 1;
  const int64_t p0 = a.seg_start[u], p1 = a.seg_start[u + 1], D = a.dim;
  A* out = SGD ? nullptr : static_cast<A*>(a.out) + u * D;
  T* w = SGD ? static_cast<T*>(a.weight) + int64_t(a.rows[p0]) * D : nullptr;
  const A neg_lr = -A(a.lr);
  for (int64_t d0 = 0; d0 < D; d0 += kWarp * kMaxCols) {
    A acc[kMaxCols];
#pragma unroll
    for (int k = 0; k < kMaxCols; ++k) acc[k] = A(0);
    for (int64_t p = p0; p < p1; ++p) {
      const uint64_t code = a.codes[p];
      const int64_t i = int64_t(code >> a.probe_bits), g = int64_t(code & gmask);
      const A* src = grad + a.slot_row[i] * a.grad_stride + a.g_col[g];
      const A sc = scale[i];
#pragma unroll
      for (int k = 0; k < kMaxCols; ++k) {
        const int64_t d = d0 + lane + k * kWarp;
        if (d < D) acc[k] = fma_acc(sc, src[d], acc[k]);
      }
    }
#pragma unroll
    for (int k = 0; k < kMaxCols; ++k) {
      const int64_t d = d0 + lane + k * kWarp;
      if (d < D) {
        if constexpr (SGD)
          store_w(w + d, fma_acc(neg_lr, acc[k], A(load_acc(w + d))));
        else
          out[d] = acc[k];
      }
    }
  }
}

template <class T, class A>
__global__ void apply_rows_kernel(BackwardArgs a, const int64_t* unique_rows, const A* gsum, int64_t max_u,
                                  const int64_t* num_unique) {
  const int lane = threadIdx.x % kWarp;
  const int64_t u = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (u >= (num_unique ? *num_unique : max_u)) return;
  const int64_t D = a.dim, row = unique_rows[u];
  const A* g = gsum + u * D;
  T* w = static_cast<T*>(a.weight) + row * D;
  A neg_step = -A(a.lr);
  if (a.mode == kRowwiseAdagrad) {
    // sum of g^2 in the CPU's order: lane j < 16 sums d = j, j + 16, ... in increasing d, then the
    // 16 partial sums fold 8, 4, 2, 1 (sum_squares_16).
    A s = A(0);
    if (lane < 16)
      for (int64_t d = lane; d < D; d += 16) s = fma_acc(g[d], g[d], s);
    for (int h = 8; h >= 1; h /= 2) {
      const A other = __shfl_down_sync(0xffffffffu, s, h);
      if (lane < h) s = add_acc(s, other);
    }
    s = __shfl_sync(0xffffffffu, s, 0);
    A* mom = static_cast<A*>(a.momentum) + row;
    const A m = add_acc(*mom, div_acc(s, A(D)));
    __syncwarp();
    if (lane == 0) *mom = m;
    neg_step = -div_acc(A(a.lr), add_acc(sqrt(m), A(a.eps)));
  }
  for (int64_t d = lane; d < D; d += kWarp) store_w(w + d, fma_acc(neg_step, g[d], A(load_acc(w + d))));
}

unsigned warp_grid(int64_t items) { return unsigned((items + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace

void forward_pooled(const ForwardArgs& a, cudaStream_t stream) {
  if (a.combine == kCombineConcat)
    launch_forward<ConcatLaunch>(a, a.L.num_features * a.L.batch, stream, "mux_embedding_bag forward kernel");
  else
    launch_forward<PooledLaunch>(a, a.L.batch, stream, "mux_embedding_bag forward kernel");
}

void forward_none(const ForwardArgs& a, cudaStream_t stream) {
  launch_forward<NoneLaunch>(a, a.L.n, stream, "mux_embedding_bag forward (pooling none) kernel");
}

void prepare_pairs(const MuxLayout& L, int pooling, int probe_bits, bool f64, const void* psw, const int64_t* pair_base,
                   int64_t* slot_row, void* scale, uint64_t* keys, uint64_t* codes, cudaStream_t stream) {
  const int64_t bags = L.num_features * L.batch;
  if (bags == 0) return;
  const unsigned grid = unsigned((bags + 255) / 256);
  if (f64)
    prepare_pairs_kernel<double><<<grid, 256, 0, stream>>>(L, pooling, probe_bits, static_cast<const double*>(psw),
                                                           pair_base, slot_row, static_cast<double*>(scale), keys, codes);
  else
    prepare_pairs_kernel<float><<<grid, 256, 0, stream>>>(L, pooling, probe_bits, static_cast<const float*>(psw),
                                                          pair_base, slot_row, static_cast<float*>(scale), keys, codes);
  check_launch("mux_embedding_bag prepare pairs kernel");
}

size_t sort_segments_temp_bytes(int64_t num_pairs, int bits) {
  const int n = int(num_pairs);
  size_t sort_bytes = 0, rle_bytes = 0, scan_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const uint64_t*>(nullptr),
                                        static_cast<uint64_t*>(nullptr), static_cast<const uint64_t*>(nullptr),
                                        static_cast<uint64_t*>(nullptr), n, 0, bits > 0 ? bits : 1),
        "cub radix sort (size query)");
  check(cub::DeviceRunLengthEncode::Encode(nullptr, rle_bytes, static_cast<const uint64_t*>(nullptr),
                                           static_cast<uint64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                           static_cast<int64_t*>(nullptr), n),
        "cub run-length encode (size query)");
  check(cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, static_cast<int64_t*>(nullptr),
                                      static_cast<int64_t*>(nullptr), n),
        "cub scan (size query)");
  return std::max(sort_bytes, std::max(rle_bytes, scan_bytes));
}

int64_t sort_segments(uint64_t* keys, uint64_t* codes, int64_t num_pairs, int bits, void* temp, size_t temp_bytes,
                      int64_t* unique_rows, int64_t* seg_start, int64_t* num_runs, bool read_count,
                      cudaStream_t stream) {
  if (num_pairs > INT32_MAX) fail("more than 2^31 - 1 (value, probe) pairs in one batch");
  const int n = int(num_pairs);
  uint64_t *keys_out = keys + num_pairs, *codes_out = codes + num_pairs;
  size_t bytes = temp_bytes;
  if (bits == 0) {  // one row: already sorted
    check(cudaMemcpyAsync(keys_out, keys, sizeof(uint64_t) * num_pairs, cudaMemcpyDeviceToDevice, stream), "copy");
    check(cudaMemcpyAsync(codes_out, codes, sizeof(uint64_t) * num_pairs, cudaMemcpyDeviceToDevice, stream), "copy");
  } else {
    check(cub::DeviceRadixSort::SortPairs(temp, bytes, keys, keys_out, codes, codes_out, n, 0, bits, stream),
          "cub radix sort");
  }
  bytes = temp_bytes;
  // Counts of each run go to seg_start[1..U]; their inclusive sum gives the segment ends. Without
  // read_count, U stays on the device: seg_start is zeroed whole, so the sum over all P slots leaves
  // P after the last segment, and the kernels stop at *num_runs (no synchronization here).
  check(cudaMemsetAsync(seg_start, 0, sizeof(int64_t) * (read_count ? 1 : num_pairs + 1), stream), "memset");
  check(cub::DeviceRunLengthEncode::Encode(temp, bytes, keys_out, reinterpret_cast<uint64_t*>(unique_rows),
                                           seg_start + 1, num_runs, n, stream),
        "cub run-length encode");
  int64_t U = num_pairs;
  if (read_count) {
    check(cudaMemcpyAsync(&U, num_runs, sizeof(int64_t), cudaMemcpyDeviceToHost, stream), "copy U");
    check(cudaStreamSynchronize(stream), "synchronize");
  }
  bytes = temp_bytes;
  check(cub::DeviceScan::InclusiveSum(temp, bytes, seg_start + 1, seg_start + 1, int(U), stream), "cub scan");
  return U;
}

void reduce_segments(const BackwardArgs& a, int64_t max_u, const int64_t* num_unique, cudaStream_t stream) {
  if (max_u == 0) return;
  const unsigned grid = warp_grid(max_u), block = kWarp * kWarpsPerBlock;
  if (a.wtype == WType::F64)
    reduce_segments_kernel<double, double, false><<<grid, block, 0, stream>>>(a, max_u, num_unique);
  else
    reduce_segments_kernel<float, float, false><<<grid, block, 0, stream>>>(a, max_u, num_unique);
  check_launch("mux_embedding_bag segment reduce kernel");
}

void reduce_segments_sgd(const BackwardArgs& a, int64_t max_u, const int64_t* num_unique, cudaStream_t stream) {
  if (max_u == 0) return;
  const unsigned grid = warp_grid(max_u), block = kWarp * kWarpsPerBlock;
  switch (a.wtype) {
    case WType::F32: reduce_segments_kernel<float, float, true><<<grid, block, 0, stream>>>(a, max_u, num_unique); break;
    case WType::BF16:
      reduce_segments_kernel<bf16_t, float, true><<<grid, block, 0, stream>>>(a, max_u, num_unique);
      break;
    case WType::F16: reduce_segments_kernel<f16_t, float, true><<<grid, block, 0, stream>>>(a, max_u, num_unique); break;
    case WType::F64:
      reduce_segments_kernel<double, double, true><<<grid, block, 0, stream>>>(a, max_u, num_unique);
      break;
  }
  check_launch("mux_embedding_bag segment reduce + SGD kernel");
}

void apply_rows(const BackwardArgs& a, const int64_t* unique_rows, const void* gsum, int64_t max_u,
                const int64_t* num_unique, cudaStream_t stream) {
  if (max_u == 0) return;
  const unsigned grid = warp_grid(max_u), block = kWarp * kWarpsPerBlock;
  switch (a.wtype) {
    case WType::F32:
      apply_rows_kernel<float, float><<<grid, block, 0, stream>>>(a, unique_rows, static_cast<const float*>(gsum), max_u,
                                                                   num_unique);
      break;
    case WType::BF16:
      apply_rows_kernel<bf16_t, float><<<grid, block, 0, stream>>>(a, unique_rows, static_cast<const float*>(gsum),
                                                                    max_u, num_unique);
      break;
    case WType::F16:
      apply_rows_kernel<f16_t, float><<<grid, block, 0, stream>>>(a, unique_rows, static_cast<const float*>(gsum), max_u,
                                                                   num_unique);
      break;
    case WType::F64:
      apply_rows_kernel<double, double><<<grid, block, 0, stream>>>(a, unique_rows, static_cast<const double*>(gsum),
                                                                     max_u, num_unique);
      break;
  }
  check_launch("mux_embedding_bag optimizer kernel");
}

}  // namespace embkern::emb::cuda

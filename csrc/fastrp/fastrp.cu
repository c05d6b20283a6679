// CUDA kernels of the fastrp family: one warp per CSR row, each lane owning 4 consecutive columns
// (16-byte fp32 / 8-byte bf16 vector loads) of a 128-column chunk; a row's indices and weights are
// loaded 32 at a time and broadcast by shuffles. The entries of a row are summed in CSR order with
// fmaf per column, exactly as on the CPU; only the norm's reduction order (a warp butterfly) differs.
// No atomics: each row is written by its own warp, so results are deterministic run to run.
#include <cuda_runtime.h>

#include <cstdint>

#include "fastrp/fastrp_cuda.h"
#include "fastrp/fastrp_hash.h"

namespace embkern::fastrp::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t b) { return __uint_as_float(b << 16); }

__device__ __forceinline__ uint32_t f32_to_bf16_bits(float f) {  // round to nearest even, as on the CPU
  uint32_t u = __float_as_uint(f);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return u >> 16;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// VEC columns per lane starting at c (VEC = 4 needs d % 4 == 0, so all 4 are in range or none).
template <bool BF16, int VEC>
__device__ __forceinline__ void load_cols(const void* x, int64_t off, float* v) {
  if constexpr (VEC == 4) {
    if constexpr (BF16) {
      const uint2 h = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(x) + off);
      v[0] = bf16_bits_to_f32(h.x & 0xFFFFu);
      v[1] = bf16_bits_to_f32(h.x >> 16);
      v[2] = bf16_bits_to_f32(h.y & 0xFFFFu);
      v[3] = bf16_bits_to_f32(h.y >> 16);
    } else {
      const float4 f = *reinterpret_cast<const float4*>(static_cast<const float*>(x) + off);
      v[0] = f.x;
      v[1] = f.y;
      v[2] = f.z;
      v[3] = f.w;
    }
  } else {
    v[0] = BF16 ? bf16_bits_to_f32(static_cast<const uint16_t*>(x)[off]) : static_cast<const float*>(x)[off];
  }
}

// v = row_scale * sum_j w_j x[idx_j, c .. c+VEC) for this lane's columns (zeros when out of range).
template <bool BF16, int VEC>
__device__ __forceinline__ void gather(const SpmmArgs& a, int64_t r, int64_t c, int lane, float* v) {
  for (int k = 0; k < VEC; ++k) v[k] = 0.f;
  const bool active = c < a.d;
  const int64_t jb = a.indptr[r], je = a.indptr[r + 1];
  for (int64_t j0 = jb; j0 < je; j0 += 32) {
    const int64_t j = j0 + lane;
    const int64_t my_idx = j < je ? a.indices[j] : 0;
    const float my_w = j < je ? (a.weights ? a.weights[j] : 1.f) : 0.f;
    const int cnt = int(je - j0 < 32 ? je - j0 : 32);
    // unrolled so that several rows' loads are in flight before the first fma (the fmas stay in order)
#pragma unroll 4
    for (int t = 0; t < cnt; ++t) {
      const int64_t idx = __shfl_sync(0xffffffffu, my_idx, t);
      const float w = __shfl_sync(0xffffffffu, my_w, t);
      if (active) {
        float x[VEC];
        load_cols<BF16, VEC>(a.x, idx * a.d + c, x);
        for (int k = 0; k < VEC; ++k) v[k] = fmaf(w, x[k], v[k]);
      }
    }
  }
  if (a.row_scale) {
    const float s = a.row_scale[r];
    for (int k = 0; k < VEC; ++k) v[k] *= s;
  }
}

template <int VEC>
__device__ __forceinline__ void write_cols(const SpmmArgs& a, int64_t r, int64_t c, const float* v, float inv) {
  if (c >= a.d) return;
  const int64_t off = r * a.d + c;
  if (a.y) {
    const float sy = a.y_normalize ? inv : 1.f;
    if (a.y_bf16) {
      uint16_t* y = static_cast<uint16_t*>(a.y) + off;
      if constexpr (VEC == 4) {
        uint2 h;
        h.x = f32_to_bf16_bits(a.y_normalize ? v[0] * sy : v[0]) | (f32_to_bf16_bits(a.y_normalize ? v[1] * sy : v[1]) << 16);
        h.y = f32_to_bf16_bits(a.y_normalize ? v[2] * sy : v[2]) | (f32_to_bf16_bits(a.y_normalize ? v[3] * sy : v[3]) << 16);
        *reinterpret_cast<uint2*>(y) = h;
      } else {
        y[0] = uint16_t(f32_to_bf16_bits(a.y_normalize ? v[0] * sy : v[0]));
      }
    } else {
      float* y = static_cast<float*>(a.y) + off;
      for (int k = 0; k < VEC; ++k) y[k] = a.y_normalize ? v[k] * sy : v[k];
    }
  }
  if (a.acc) {
    float* acc = a.acc + off;
    if (a.acc_overwrite) {
      for (int k = 0; k < VEC; ++k) acc[k] = a.acc_weight * (a.acc_normalize ? v[k] * inv : v[k]);
    } else {
      for (int k = 0; k < VEC; ++k) acc[k] = fmaf(a.acc_weight, a.acc_normalize ? v[k] * inv : v[k], acc[k]);
    }
  }
}

template <bool BF16, int VEC>
__global__ void spmm_kernel(SpmmArgs a, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;  // whole warps exit together
  constexpr int64_t kChunk = 32 * VEC;
  const bool need_norm = (a.y && a.y_normalize) || (a.acc && a.acc_normalize);
  float v[VEC];
  if (a.d <= kChunk) {  // the row stays in registers
    const int64_t c = int64_t(lane) * VEC;
    gather<BF16, VEC>(a, r, c, lane, v);
    float inv = 1.f;
    if (need_norm) {
      float ss = 0.f;
      for (int k = 0; k < VEC; ++k) ss = fmaf(v[k], v[k], ss);
      ss = warp_sum(ss);
      inv = ss > 0.f ? 1.0f / sqrtf(ss) : 0.f;
    }
    write_cols<VEC>(a, r, c, v, inv);
    return;
  }
  float inv = 1.f;
  if (need_norm) {  // wide rows: a first pass for the norm, then recompute (no scratch memory)
    float ss = 0.f;
    for (int64_t c0 = 0; c0 < a.d; c0 += kChunk) {
      gather<BF16, VEC>(a, r, c0 + int64_t(lane) * VEC, lane, v);
      for (int k = 0; k < VEC; ++k) ss = fmaf(v[k], v[k], ss);
    }
    ss = warp_sum(ss);
    inv = ss > 0.f ? 1.0f / sqrtf(ss) : 0.f;
  }
  for (int64_t c0 = 0; c0 < a.d; c0 += kChunk) {
    const int64_t c = c0 + int64_t(lane) * VEC;
    gather<BF16, VEC>(a, r, c, lane, v);
    write_cols<VEC>(a, r, c, v, inv);
  }
}

__device__ __forceinline__ float init_value(const InitArgs& a, int64_t r, uint64_t rs, int64_t c) {
  float v;
  if (c < a.rand_dim) {
    v = rp_entry(rs, c, a.threshold, a.sqrt_s);
  } else {
    const int64_t fdim = a.dim - a.rand_dim, fc = c - a.rand_dim;
    v = 0.f;
    for (int64_t p = 0; p < a.num_features; ++p) {
      const float f = a.features[r * a.num_features + p];
      if (f != 0.f) v = fmaf(f, a.feature_proj[p * fdim + fc], v);
    }
  }
  return a.row_scale ? v * a.row_scale[r] : v;
}

__global__ void init_kernel(InitArgs a, int64_t rows) {
  const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const int64_t key = a.keys ? a.keys[r] : r;
  const uint64_t rs = rp_row_state(a.seed_state, key);
  float inv = 1.f;
  if (a.acc && a.acc_normalize && a.acc_weight != 0.f) {
    float ss = 0.f;
    for (int64_t c = lane; c < a.dim; c += 32) {
      const float v = init_value(a, r, rs, c);
      ss = fmaf(v, v, ss);
    }
    ss = warp_sum(ss);
    inv = ss > 0.f ? 1.0f / sqrtf(ss) : 0.f;
  }
  for (int64_t c = lane; c < a.dim; c += 32) {
    const float v = init_value(a, r, rs, c);
    const int64_t off = r * a.dim + c;
    if (a.y) {
      if (a.y_bf16)
        static_cast<uint16_t*>(a.y)[off] = uint16_t(f32_to_bf16_bits(v));
      else
        static_cast<float*>(a.y)[off] = v;
    }
    if (a.acc) a.acc[off] = a.acc_weight == 0.f ? 0.f : a.acc_weight * (a.acc_normalize ? v * inv : v);
  }
}

__global__ void degrees_kernel(const int64_t* indptr, const float* weights, int64_t rows, double beta, float* inv_deg,
                               float* lscale) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  double deg = 0.0;
  if (weights)
    for (int64_t j = indptr[r]; j < indptr[r + 1]; ++j) deg += weights[j];
  else
    deg = double(indptr[r + 1] - indptr[r]);
  inv_deg[r] = deg > 0 ? float(1.0 / deg) : 0.f;
  lscale[r] = deg > 0 ? float(pow(deg, beta)) : 1.f;
}

unsigned warp_blocks(int64_t rows) { return unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

}  // namespace

void spmm(const SpmmArgs& a, int64_t rows, cudaStream_t stream) {
  if (rows == 0) return;
  const unsigned blocks = warp_blocks(rows), threads = 32 * kWarpsPerBlock;
  // 4 columns per lane need d % 4 == 0 and aligned rows: 16 bytes for fp32 x, 8 for bf16 x and a
  // bf16 y (a contiguous view may start at any element).
  const auto aligned = [](const void* p, uintptr_t n) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % n == 0; };
  const bool vec4 = a.d % 4 == 0 && aligned(a.x, a.x_bf16 ? 8 : 16) && (!a.y_bf16 || aligned(a.y, 8));
  if (a.x_bf16) {
    if (vec4) spmm_kernel<true, 4><<<blocks, threads, 0, stream>>>(a, rows);
    else spmm_kernel<true, 1><<<blocks, threads, 0, stream>>>(a, rows);
  } else {
    if (vec4) spmm_kernel<false, 4><<<blocks, threads, 0, stream>>>(a, rows);
    else spmm_kernel<false, 1><<<blocks, threads, 0, stream>>>(a, rows);
  }
}

void init(const InitArgs& a, int64_t rows, cudaStream_t stream) {
  if (rows == 0) return;
  init_kernel<<<warp_blocks(rows), 32 * kWarpsPerBlock, 0, stream>>>(a, rows);
}

void degrees(const int64_t* indptr, const float* weights, int64_t rows, double beta, float* inv_deg, float* lscale,
             cudaStream_t stream) {
  if (rows == 0) return;
  degrees_kernel<<<unsigned((rows + 255) / 256), 256, 0, stream>>>(indptr, weights, rows, beta, inv_deg, lscale);
}

}  // namespace embkern::fastrp::cuda

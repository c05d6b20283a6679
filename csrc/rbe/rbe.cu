// CUDA kernels of the rbe family: bit-plane SDC scores and top-k keys. No torch headers.
//
// Codes are first turned into bit planes, word-major ([plane * W + w][row]) so that consecutive
// threads (rows) read consecutive words; then each thread scores one database row against a tile
// of queries held in shared memory with AND + __popcll, exactly as the CPU kernels (same integer
// S, same float roundings: float(S) round-to-nearest, * 2^-2u, * inv_norm with __fmul_rn).
#include <cuda_runtime.h>

#include <cstdint>

#include "rbe/rbe_cuda.h"
#include "rbe/rbe_kernels.h"

namespace embkern::rbe::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kQueryTile = 8;   // queries per block (registers: kQueryTile x (2 bits - 1) accumulators)
constexpr int kWordTile = 16;   // plane words per shared-memory tile

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// planes[(i * words + w) * n + r] = bit plane i (0 = most significant) word w of row r (dimension
// 64w + t in bit t); lsum[r] = sum of the row's levels. One thread per (row, word).
__global__ void to_planes_kernel(const uint8_t* __restrict__ codes, int64_t n, int64_t dim, int bits,
                                 int64_t code_bytes, int64_t words, uint64_t* __restrict__ planes,
                                 unsigned long long* __restrict__ lsum) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * words) return;
  const int64_t r = t / words, w = t % words;
  const uint8_t* row = codes + r * code_bytes;
  uint64_t p[4] = {0, 0, 0, 0};
  unsigned long long s = 0;
  const int64_t d_end = min(dim, 64 * (w + 1));
  for (int64_t d = 64 * w; d < d_end; ++d) {
    const int64_t pos = d * bits, byte = pos / 8;
    const unsigned window = (unsigned(row[byte]) << 8) | (byte + 1 < code_bytes ? row[byte + 1] : 0u);
    const unsigned level = (window >> (16 - bits - pos % 8)) & ((1u << bits) - 1);
    s += level;
    for (int i = 0; i < bits; ++i) p[i] |= uint64_t((level >> (bits - 1 - i)) & 1) << (d - 64 * w);
  }
  for (int i = 0; i < bits; ++i) planes[(i * words + w) * n + r] = p[i];
  atomicAdd(&lsum[r], s);  // integer: exact and order-independent
}

__device__ __forceinline__ float sdc_value(long long s, float scale, const float* inv, int64_t j) {
  float v = __fmul_rn(__ll2float_rn(s), scale);
  if (inv) v = __fmul_rn(v, inv[j]);
  return v;
}

// Order-preserving key: larger score first, then the lower index (see rbe_cuda.h). +0 and -0 are
// one value, as in the CPU comparisons.
__device__ __forceinline__ long long make_key(float v, int64_t j) {
  if (v == 0.0f) v = 0.0f;
  unsigned u = __float_as_uint(v);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  const unsigned long long key = (static_cast<unsigned long long>(u) << 32) | (0xFFFFFFFFull - uint64_t(j));
  return static_cast<long long>(key ^ 0x8000000000000000ull);  // signed order of int64 = unsigned order of key
}

template <int B, bool Keys>
__global__ void __launch_bounds__(kThreads) sdc_kernel(const uint64_t* __restrict__ qplanes,
                                                       const unsigned long long* __restrict__ qsum, int64_t nq,
                                                       const uint64_t* __restrict__ dplanes,
                                                       const unsigned long long* __restrict__ dsum, int64_t nb,
                                                       int64_t dim, int64_t words, const float* __restrict__ inv,
                                                       float* __restrict__ out, long long* __restrict__ keys,
                                                       int64_t tile_base) {
  __shared__ uint64_t sq[kQueryTile][B][kWordTile];
  const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t q0 = (tile_base + blockIdx.y) * kQueryTile;
  const int qn = int(min(int64_t(kQueryTile), nq - q0));
  int acc[kQueryTile][2 * B - 1];  // per class at most 4 x 64 per word: int32 for dim <= 2^21
#pragma unroll
  for (int a = 0; a < kQueryTile; ++a)
#pragma unroll
    for (int s = 0; s < 2 * B - 1; ++s) acc[a][s] = 0;
  for (int64_t w0 = 0; w0 < words; w0 += kWordTile) {
    const int wn = int(min(int64_t(kWordTile), words - w0));
    __syncthreads();
    for (int e = threadIdx.x; e < kQueryTile * B * kWordTile; e += kThreads) {
      const int a = e / (B * kWordTile), i = (e / kWordTile) % B, w = e % kWordTile;
      sq[a][i][w] = (a < qn && w < wn) ? qplanes[(int64_t(i) * words + w0 + w) * nq + q0 + a] : 0ull;
    }
    __syncthreads();
    if (j < nb) {
      for (int w = 0; w < wn; ++w) {
        uint64_t d[B];
#pragma unroll
        for (int jp = 0; jp < B; ++jp) d[jp] = dplanes[(int64_t(jp) * words + w0 + w) * nb + j];
#pragma unroll
        for (int a = 0; a < kQueryTile; ++a)
#pragma unroll
          for (int i = 0; i < B; ++i)
#pragma unroll
            for (int jp = 0; jp < B; ++jp) acc[a][i + jp] += __popcll(sq[a][i][w] & d[jp]);
      }
    }
  }
  if (j >= nb) return;
  const long long c = (1 << B) - 1;
  const float scale = 1.0f / float(1 << (2 * (B - 1)));
  const long long e = 2 * c * static_cast<long long>(dsum[j]);
#pragma unroll
  for (int a = 0; a < kQueryTile; ++a) {
    if (a >= qn) break;
    long long dot = acc[a][0];
    // Horner over s = i + j: sum_s 2^(2u-s) acc_s
#pragma unroll
    for (int s = 1; s < 2 * B - 1; ++s) dot = 2 * dot + acc[a][s];
    const long long kq = 2 * c * static_cast<long long>(qsum[q0 + a]) - dim * c * c;
    const float v = sdc_value(4 * dot - e - kq, scale, inv, j);
    if (Keys) keys[(q0 + a) * nb + j] = make_key(v, j);
    else out[(q0 + a) * nb + j] = v;
  }
}

__global__ void decode_keys_kernel(const long long* __restrict__ keys, int64_t n, float* __restrict__ vals,
                                   int64_t* __restrict__ idx) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  const unsigned long long key = static_cast<unsigned long long>(keys[t]) ^ 0x8000000000000000ull;
  unsigned u = unsigned(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  vals[t] = __uint_as_float(u);
  idx[t] = int64_t(0xFFFFFFFFull - (key & 0xFFFFFFFFull));
}

struct Workspace {
  uint64_t *qp, *dp;
  unsigned long long *qs, *ds;
};

Workspace prepare(const uint8_t* q, int64_t nq, const uint8_t* db, int64_t nb, int64_t dim, int bits,
                  uint64_t* ws, cudaStream_t stream) {
  const int64_t words = sdc_plane_words(dim), cb = sdc_code_bytes(dim, bits);
  Workspace w{ws, ws + bits * words * nq, nullptr, nullptr};
  w.qs = reinterpret_cast<unsigned long long*>(w.dp + bits * words * nb);
  w.ds = w.qs + nq;
  cudaMemsetAsync(w.qs, 0, size_t(nq + nb) * 8, stream);
  to_planes_kernel<<<unsigned(ceil_div(nq * words, kThreads)), kThreads, 0, stream>>>(q, nq, dim, bits, cb, words, w.qp, w.qs);
  to_planes_kernel<<<unsigned(ceil_div(nb * words, kThreads)), kThreads, 0, stream>>>(db, nb, dim, bits, cb, words, w.dp, w.ds);
  return w;
}

template <bool Keys>
void launch(const Workspace& w, int64_t nq, int64_t nb, int64_t dim, int bits, const float* inv, float* out,
            long long* keys, cudaStream_t stream) {
  const int64_t words = sdc_plane_words(dim);
  const int64_t tiles = ceil_div(nq, kQueryTile);
  for (int64_t t0 = 0; t0 < tiles; t0 += 65535) {  // gridDim.y is at most 65535
    const dim3 grid(unsigned(ceil_div(nb, kThreads)), unsigned(min(int64_t(65535), tiles - t0)));
    switch (bits) {
      case 1: sdc_kernel<1, Keys><<<grid, kThreads, 0, stream>>>(w.qp, w.qs, nq, w.dp, w.ds, nb, dim, words, inv, out, keys, t0); break;
      case 2: sdc_kernel<2, Keys><<<grid, kThreads, 0, stream>>>(w.qp, w.qs, nq, w.dp, w.ds, nb, dim, words, inv, out, keys, t0); break;
      case 3: sdc_kernel<3, Keys><<<grid, kThreads, 0, stream>>>(w.qp, w.qs, nq, w.dp, w.ds, nb, dim, words, inv, out, keys, t0); break;
      default: sdc_kernel<4, Keys><<<grid, kThreads, 0, stream>>>(w.qp, w.qs, nq, w.dp, w.ds, nb, dim, words, inv, out, keys, t0); break;
    }
  }
}

}  // namespace

size_t sdc_workspace_words(int64_t nq, int64_t nb, int bits, int64_t plane_words) {
  return size_t(bits * plane_words * (nq + nb) + nq + nb + 1);
}

void sdc_scores(const uint8_t* q_codes, int64_t nq, const uint8_t* db_codes, int64_t nb, int64_t dim, int bits,
                const float* db_inv_norm, float* out, uint64_t* workspace, cudaStream_t stream) {
  if (nq == 0 || nb == 0) return;
  const Workspace w = prepare(q_codes, nq, db_codes, nb, dim, bits, workspace, stream);
  launch<false>(w, nq, nb, dim, bits, db_inv_norm, out, nullptr, stream);
}

void sdc_keys(const uint8_t* q_codes, int64_t nq, const uint8_t* db_codes, int64_t nb, int64_t dim, int bits,
              const float* db_inv_norm, int64_t* keys, uint64_t* workspace, cudaStream_t stream) {
  if (nq == 0 || nb == 0) return;
  const Workspace w = prepare(q_codes, nq, db_codes, nb, dim, bits, workspace, stream);
  launch<true>(w, nq, nb, dim, bits, db_inv_norm, nullptr, reinterpret_cast<long long*>(keys), stream);
}

void sdc_decode_keys(const int64_t* keys, int64_t n, float* vals, int64_t* idx, cudaStream_t stream) {
  if (n == 0) return;
  decode_keys_kernel<<<unsigned(ceil_div(n, kThreads)), kThreads, 0, stream>>>(reinterpret_cast<const long long*>(keys), n, vals, idx);
}

}  // namespace embkern::rbe::cuda

// int8 family kernels: quantization and exact int8 similarity search over raw pointers.
// Framework-free. Each ISA variant lives in its own translation unit, compiled with its own flags;
// int8_ref.cpp is the scalar twin (the oracle).
#pragma once
#include <cstdint>

namespace embkern::int8 {

// Largest dimension whose int8 dot products cannot overflow int32: |q . d| <= D * 128 * 128, and
// 131071 * 16384 < 2^31. (The VNNI path's biased partial sums may wrap mid-way; two's complement
// addition is exact modulo 2^32, so only the final value has to fit.)
constexpr int64_t kMaxDim = 131071;

// ---- quantization ----------------------------------------------------------------------------------
// out[i, d] = saturate_int8(rint(x[i, d] / scale[d]) + zero_point[d]), rint = round half to even,
// in float32 arithmetic (a true division, so every path gives the bit-identical result).
// Returns false if any x is NaN or +-Inf (the caller raises; `out` is then unspecified).
#define EMBKERN_INT8_QUANT_ARGS \
  const float *x, int64_t n, int64_t dim, const float *scale, const float *zero_point, int8_t *out
bool quantize_f32_scalar(EMBKERN_INT8_QUANT_ARGS);
bool quantize_f32_avx2(EMBKERN_INT8_QUANT_ARGS);
bool quantize_f32_avx512(EMBKERN_INT8_QUANT_ARGS);

// ---- top-k -------------------------------------------------------------------------------------------
// Per-query bounded heaps (common/topk.h), larger is better: query q owns vals[q*k .. q*k+k),
// idx[...] and size[q]. Dot: exact int32 scores. Cosine: float32 scores
// (float(dot) * db_inv_norm[j]) * q_inv_norm[q], computed in that order by every path.
template <typename T>
struct Heaps {
  T* vals;
  int64_t* idx;
  int64_t* size;
  int64_t k;
};

// Offers every database row in [db_begin, db_end), in increasing index order, to each query's
// heap. Precondition: every index already kept is < db_begin. Rows are `dim` int8 values each.
#define EMBKERN_INT8_DOT_ARGS \
  const int8_t *queries, int64_t nq, const int8_t *db, int64_t db_begin, int64_t db_end, int64_t dim, Heaps<int32_t> heaps
#define EMBKERN_INT8_COS_ARGS                                                                                      \
  const int8_t *queries, int64_t nq, const int8_t *db, int64_t db_begin, int64_t db_end, int64_t dim,              \
      const float *q_inv_norm, const float *db_inv_norm, Heaps<float> heaps
void int8_topk_dot_scalar(EMBKERN_INT8_DOT_ARGS);
void int8_topk_dot_avx2(EMBKERN_INT8_DOT_ARGS);
void int8_topk_dot_avx512(EMBKERN_INT8_DOT_ARGS);      // AVX-512BW: vpmaddwd on sign-extended int16
void int8_topk_dot_avx512vnni(EMBKERN_INT8_DOT_ARGS);  // AVX512_VNNI: vpdpbusd
void int8_topk_cos_scalar(EMBKERN_INT8_COS_ARGS);
void int8_topk_cos_avx2(EMBKERN_INT8_COS_ARGS);
void int8_topk_cos_avx512(EMBKERN_INT8_COS_ARGS);
void int8_topk_cos_avx512vnni(EMBKERN_INT8_COS_ARGS);

}  // namespace embkern::int8

// AVX2 + FMA fastrp kernels: CSR rows x dense with d blocked in ymm accumulators (64 columns per
// pass), contiguous row loads, software prefetch, scalar fma for the last d % 8 columns.
#include <immintrin.h>

#include <vector>

#include "fastrp/fastrp_rows.h"

namespace embkern::fastrp {
namespace {

constexpr int64_t kPrefetch = 16;  // entries ahead (see fastrp_avx512.cpp)

inline __m256 load8(const void* x, bool bf16, int64_t off) {
  if (bf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + off));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  return _mm256_loadu_ps(static_cast<const float*>(x) + off);
}

template <int NV, bool BF16>
void gather_block(const SpmmArgs& a, int64_t jb, int64_t je, int64_t c0, float* v) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  const int64_t d = a.d;
  const int64_t esize = BF16 ? 2 : 4;
  for (int64_t j = jb; j < je; ++j) {
    if (j + kPrefetch < a.nnz) {
      const char* p = static_cast<const char*>(a.x) + (a.indices[j + kPrefetch] * d + c0) * esize;
      for (int64_t l = 0; l < NV * 8 * esize; l += 64) _mm_prefetch(p + l, _MM_HINT_T1);
    }
    const __m256 w = _mm256_set1_ps(a.weights ? a.weights[j] : 1.f);
    const int64_t off = a.indices[j] * d + c0;
    for (int i = 0; i < NV; ++i) acc[i] = _mm256_fmadd_ps(w, load8(a.x, BF16, off + 8 * i), acc[i]);
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(v + c0 + 8 * i, acc[i]);
}

// Coded rows (SpmmArgs::x_codes): per 8 columns one broadcast word, a variable shift and a permute
// of the row's table {0, +v, -v, 0} (3 index bits: the table is repeated twice), as on AVX-512.
template <int NV>
void gather_block_codes(const SpmmArgs& a, int64_t jb, int64_t je, int64_t c0, float* v) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  const int64_t stride = a.code_stride;
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i mag = _mm256_setr_epi32(0, -1, -1, 0, 0, -1, -1, 0);
  const __m256i sign = _mm256_setr_epi32(0, 0, int32_t(0x80000000u), 0, 0, 0, int32_t(0x80000000u), 0);
  for (int64_t j = jb; j < je; ++j) {
    if (j + kPrefetch < a.nnz)
      _mm_prefetch(reinterpret_cast<const char*>(a.x_codes + a.indices[j + kPrefetch] * stride + c0 / 16), _MM_HINT_T0);
    const uint32_t* row = a.x_codes + a.indices[j] * stride;
    const __m256 w = _mm256_set1_ps(a.weights ? a.weights[j] : 1.f);
    const __m256i vb = _mm256_set1_epi32(int32_t(row[a.code_words]));
    const __m256 table = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(vb, mag), sign));
    for (int i = 0; i < NV; ++i) {
      const int64_t c = c0 + 8 * i;  // 8 columns: half of word c / 16
      const __m256i word = _mm256_set1_epi32(int32_t(row[c >> 4] >> (2 * (c & 15))));
      acc[i] = _mm256_fmadd_ps(w, _mm256_permutevar8x32_ps(table, _mm256_srlv_epi32(word, shifts)), acc[i]);
    }
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(v + c0 + 8 * i, acc[i]);
}

void gather_dispatch_codes(const SpmmArgs& a, int64_t jb, int64_t je, int64_t c0, int nv, float* v) {
  switch (nv) {
    case 1: return gather_block_codes<1>(a, jb, je, c0, v);
    case 2: return gather_block_codes<2>(a, jb, je, c0, v);
    case 3: return gather_block_codes<3>(a, jb, je, c0, v);
    case 4: return gather_block_codes<4>(a, jb, je, c0, v);
    case 5: return gather_block_codes<5>(a, jb, je, c0, v);
    case 6: return gather_block_codes<6>(a, jb, je, c0, v);
    case 7: return gather_block_codes<7>(a, jb, je, c0, v);
    default: return gather_block_codes<8>(a, jb, je, c0, v);
  }
}

template <bool BF16>
void gather_dispatch(const SpmmArgs& a, int64_t jb, int64_t je, int64_t c0, int nv, float* v) {
  switch (nv) {
    case 1: return gather_block<1, BF16>(a, jb, je, c0, v);
    case 2: return gather_block<2, BF16>(a, jb, je, c0, v);
    case 3: return gather_block<3, BF16>(a, jb, je, c0, v);
    case 4: return gather_block<4, BF16>(a, jb, je, c0, v);
    case 5: return gather_block<5, BF16>(a, jb, je, c0, v);
    case 6: return gather_block<6, BF16>(a, jb, je, c0, v);
    case 7: return gather_block<7, BF16>(a, jb, je, c0, v);
    default: return gather_block<8, BF16>(a, jb, je, c0, v);
  }
}

}  // namespace

void spmm_rows_avx2(const SpmmArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t d = a.d, dv = d / 8 * 8;
  std::vector<float> v(static_cast<size_t>(d));
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t jb = a.indptr[r], je = a.indptr[r + 1];
    for (int64_t c0 = 0; c0 < dv; c0 += 64) {
      const int nv = int(std::min<int64_t>(64, dv - c0) / 8);
      if (a.x_codes)
        gather_dispatch_codes(a, jb, je, c0, nv, v.data());
      else if (a.x_bf16)
        gather_dispatch<true>(a, jb, je, c0, nv, v.data());
      else
        gather_dispatch<false>(a, jb, je, c0, nv, v.data());
    }
    for (int64_t c = dv; c < d; ++c) v[c] = 0.f;
    if (dv < d) {
      for (int64_t j = jb; j < je; ++j) {
        const float w = a.weights ? a.weights[j] : 1.f;
        const int64_t src = a.indices[j] * d;
        for (int64_t c = dv; c < d; ++c) {
          const float x = a.x_codes ? code_value(a, a.indices[j], c)
                          : a.x_bf16 ? bf16_to_f32(static_cast<const uint16_t*>(a.x)[src + c])
                                   : static_cast<const float*>(a.x)[src + c];
          v[c] = std::fma(w, x, v[c]);
        }
      }
    }
    apply_row_scale(v.data(), d, a.row_scale, r);
    row_epilogue(v.data(), d, r, a.y, a.y_bf16, a.y_normalize, a.acc, a.acc_weight, a.acc_normalize, a.acc_overwrite,
                 a.acc_src, a.acc_src_bf16, a.acc_src_weight, a.acc_src_normalize, a.y_stream);
  }
  end_row_stores();
}

void init_rows_avx2(const InitArgs& a, int64_t row_begin, int64_t row_end) { init_rows_impl(a, row_begin, row_end, fill_random_scalar, fill_codes_scalar); }

}  // namespace embkern::fastrp

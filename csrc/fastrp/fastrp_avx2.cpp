// AVX2 + FMA fastrp kernels: CSR rows x dense with d blocked in ymm accumulators (64 columns per
// pass), contiguous row loads, software prefetch, bf16 rows split into even and odd columns (exact),
// scalar fma for the last d % 8 columns.
#include <immintrin.h>

#include <vector>

#include "fastrp/fastrp_rows.h"

namespace embkern::fastrp {
namespace {

template <int NV, class Ids>
void gather_block(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, float* v) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  const float* x = static_cast<const float*>(a.x);
  for (int64_t j = jb; j < je; ++j) {
    prefetch_x_row(a, ids, j + kGatherAhead, c0, 4, NV * 32);
    const __m256 w = _mm256_set1_ps(entry_weight(a, j));
    const float* row = x + ids[j] * a.d + c0;
    for (int i = 0; i < NV; ++i) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(row + 8 * i), acc[i]);
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(v + c0 + 8 * i, acc[i]);
}

// bf16 rows, 16 columns per 32-byte load split into even and odd columns by a shift and a mask (see
// fastrp_avx512.cpp); an odd NV leaves 8 columns, widened by a zero-extend and a shift.
template <int NV, class Ids>
void gather_block_bf16(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, float* v) {
  constexpr int NP = NV / 2;
  __m256 even[NP + 1], odd[NP + 1], last = _mm256_setzero_ps();
  for (int i = 0; i < NP; ++i) {
    even[i] = _mm256_setzero_ps();
    odd[i] = _mm256_setzero_ps();
  }
  const __m256i high_half = _mm256_set1_epi32(int32_t(0xFFFF0000u));
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  for (int64_t j = jb; j < je; ++j) {
    prefetch_x_row(a, ids, j + kGatherAhead, c0, 2, NV * 16);
    const __m256 w = _mm256_set1_ps(entry_weight(a, j));
    const uint16_t* row = x + ids[j] * a.d + c0;
    for (int i = 0; i < NP; ++i) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 16 * i));
      even[i] = _mm256_fmadd_ps(w, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)), even[i]);
      odd[i] = _mm256_fmadd_ps(w, _mm256_castsi256_ps(_mm256_and_si256(h, high_half)), odd[i]);
    }
    if constexpr (NV % 2 == 1) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * NP));
      last = _mm256_fmadd_ps(w, bf16x8_to_f32(h), last);
    }
  }
  for (int i = 0; i < NP; ++i) {  // (e0 o0 e1 o1 | e4 o4 e5 o5), (e2 o2 e3 o3 | e6 o6 e7 o7) -> columns in order
    const __m256 lo = _mm256_unpacklo_ps(even[i], odd[i]), hi = _mm256_unpackhi_ps(even[i], odd[i]);
    _mm256_storeu_ps(v + c0 + 16 * i, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(v + c0 + 16 * i + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
  }
  if constexpr (NV % 2 == 1) _mm256_storeu_ps(v + c0 + 16 * NP, last);
}

// Coded rows (SpmmArgs::x_codes): per 8 columns one broadcast word, a variable shift and a permute
// of the row's table {0, +v, -v, 0} (3 index bits: the table is repeated twice), as on AVX-512.
template <int NV, class Ids>
void gather_block_codes(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, float* v) {
  __m256 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm256_setzero_ps();
  const int64_t stride = a.code_stride;
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i mag = _mm256_setr_epi32(0, -1, -1, 0, 0, -1, -1, 0);
  const __m256i sign = _mm256_setr_epi32(0, 0, int32_t(0x80000000u), 0, 0, 0, int32_t(0x80000000u), 0);
  const auto table_of = [&](__m256i vb) { return _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(vb, mag), sign)); };
  const __m256 shared_table = table_of(_mm256_castps_si256(_mm256_set1_ps(a.code_magnitude)));
  for (int64_t j = jb; j < je; ++j) {
    if (j + kGatherAhead < a.nnz)
      _mm_prefetch(reinterpret_cast<const char*>(a.x_codes + ids[j + kGatherAhead] * stride + c0 / 16), _MM_HINT_T0);
    const uint32_t* row = a.x_codes + ids[j] * stride;
    const __m256 w = _mm256_set1_ps(entry_weight(a, j));
    const __m256 table = a.code_row_magnitude ? table_of(_mm256_set1_epi32(int32_t(row[a.code_words]))) : shared_table;
    for (int i = 0; i < NV; ++i) {
      const int64_t c = c0 + 8 * i;  // 8 columns: half of word c / 16
      const __m256i word = _mm256_set1_epi32(int32_t(row[c >> 4] >> (2 * (c & 15))));
      acc[i] = _mm256_fmadd_ps(w, _mm256_permutevar8x32_ps(table, _mm256_srlv_epi32(word, shifts)), acc[i]);
    }
  }
  for (int i = 0; i < NV; ++i) _mm256_storeu_ps(v + c0 + 8 * i, acc[i]);
}

}  // namespace

void spmm_rows_avx2(const SpmmArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t d = a.d, dv = d / 8 * 8;
  std::vector<float> v(static_cast<size_t>(d));
  with_typed_ids(a.indices, [&](const auto& ids) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t jb = a.indptr[r], je = a.indptr[r + 1];
      prefetch_acc_src(a, r, row_end);
      for (int64_t c0 = 0; c0 < dv; c0 += 64) {
        const int nv = int(std::min<int64_t>(64, dv - c0) / 8);
        with_vector_count(nv, [&](auto n) {
          if (a.x_codes)
            gather_block_codes<n>(a, ids, jb, je, c0, v.data());
          else if (a.x_bf16)
            gather_block_bf16<n>(a, ids, jb, je, c0, v.data());
          else
            gather_block<n>(a, ids, jb, je, c0, v.data());
        });
      }
      for (int64_t c = dv; c < d; ++c) v[c] = 0.f;
      if (dv < d) {
        for (int64_t j = jb; j < je; ++j) {
          const float w = entry_weight(a, j);
          const int64_t src = ids[j] * d;
          for (int64_t c = dv; c < d; ++c) {
            const float x = a.x_codes ? code_value(a, ids[j], c)
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
  });
  end_row_stores();
}

void init_rows_avx2(const InitArgs& a, int64_t row_begin, int64_t row_end) { init_rows_impl(a, row_begin, row_end, fill_random_scalar, fill_codes_scalar); }

DegreeFlags degree_rows_avx2(const DegreeArgs& a, int64_t row_begin, int64_t row_end) { return degree_rows_impl(a, row_begin, row_end); }

}  // namespace embkern::fastrp

// AVX-512 fastrp kernels: CSR rows x dense with d blocked in up to 8 zmm accumulators (128 fp32
// columns per pass, masked tail vector), contiguous row loads (no vgather), software prefetch of
// the row kGatherAhead entries ahead, bf16 rows split into even and odd columns by a shift and a
// mask (exact). The epilogue's row norms and stores are vectorized in fastrp_rows.h.
// GCC 12 reports its own AVX-512 intrinsics headers as using uninitialized values (a known false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <vector>

#include "fastrp/fastrp_rows.h"

namespace embkern::fastrp {
namespace {

template <int NV, class Ids>
void gather_block(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, __mmask16 tail, float* v) {
  __m512 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm512_setzero_ps();
  const float* x = static_cast<const float*>(a.x);
  for (int64_t j = jb; j < je; ++j) {
    prefetch_x_row(a, ids, j + kGatherAhead, c0, 4, NV * 64);
    const __m512 w = _mm512_set1_ps(entry_weight(a, j));
    const float* row = x + ids[j] * a.d + c0;
    for (int i = 0; i < NV; ++i)
      acc[i] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(i == NV - 1 ? tail : __mmask16(0xFFFF), row + 16 * i), acc[i]);
  }
  for (int i = 0; i < NV; ++i) _mm512_mask_storeu_ps(v + c0 + 16 * i, i == NV - 1 ? tail : __mmask16(0xFFFF), acc[i]);
}

// bf16 rows, 32 columns per 64-byte load: 32-bit lane k holds column 2k in its low half and 2k + 1
// in its high half, so `lane << 16` is column 2k and `lane & 0xFFFF0000` column 2k + 1, both exact
// fp32. Even and odd columns accumulate apart (the same fma per column as any other path, so the
// same bits) and are interleaved once per row: one ALU op per 16 columns besides the fma, where
// widening each 16 columns took a shuffle (port 5, which the fmas also need) and a shift
// (measured at P5's size: the two bf16 SpMMs ~20 and ~30 ms faster).
template <int NP, class Ids>
void gather_block_bf16(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, __mmask32 tail, float* v) {
  __m512 even[NP], odd[NP];
  for (int i = 0; i < NP; ++i) {
    even[i] = _mm512_setzero_ps();
    odd[i] = _mm512_setzero_ps();
  }
  const __m512i high_half = _mm512_set1_epi32(int32_t(0xFFFF0000u));
  const uint16_t* x = static_cast<const uint16_t*>(a.x);
  for (int64_t j = jb; j < je; ++j) {
    prefetch_x_row(a, ids, j + kGatherAhead, c0, 2, NP * 64);
    const __m512 w = _mm512_set1_ps(entry_weight(a, j));
    const uint16_t* row = x + ids[j] * a.d + c0;
    for (int i = 0; i < NP; ++i) {
      const __m512i h = _mm512_maskz_loadu_epi16(i == NP - 1 ? tail : __mmask32(0xFFFFFFFFu), row + 32 * i);
      even[i] = _mm512_fmadd_ps(w, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)), even[i]);
      odd[i] = _mm512_fmadd_ps(w, _mm512_castsi512_ps(_mm512_and_si512(h, high_half)), odd[i]);
    }
  }
  const __m512i first16 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second16 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int i = 0; i < NP; ++i) {
    const __mmask32 m = i == NP - 1 ? tail : __mmask32(0xFFFFFFFFu);
    _mm512_mask_storeu_ps(v + c0 + 32 * i, __mmask16(m), _mm512_permutex2var_ps(even[i], first16, odd[i]));
    _mm512_mask_storeu_ps(v + c0 + 32 * i + 16, __mmask16(m >> 16), _mm512_permutex2var_ps(even[i], second16, odd[i]));
  }
}

// Coded rows (SpmmArgs::x_codes): per 16 columns one broadcast word, one variable shift that brings
// each lane's 2-bit field to the bottom, and one permute of the row's table {0, +v, -v, 0} (the
// permute reads 4 index bits; the two above the field hold the next column's, so the table is
// repeated 4 times). One record (codes, and the magnitude unless all rows share it) is half or one
// cache line. The products are those of the materialized row: fma(w, +-v or +0, acc).
template <int NV, class Ids>
void gather_block_codes(const SpmmArgs& a, const Ids& ids, int64_t jb, int64_t je, int64_t c0, __mmask16 tail, float* v) {
  __m512 acc[NV];
  for (int i = 0; i < NV; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t stride = a.code_stride, w0 = c0 / 16;
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  // table = v & magnitude lanes | sign lanes: lanes 1 mod 4 = +v, 2 mod 4 = -v (v >= +0), others +0
  const __m512i mag = _mm512_setr_epi32(0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0, 0, -1, -1, 0);
  const __m512i sign = _mm512_maskz_mov_epi32(0x4444, _mm512_set1_epi32(int32_t(0x80000000u)));
  const auto table_of = [&](__m512i vb) { return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(vb, mag, sign, 0xEA)); };  // (a & b) | c
  const __m512 shared_table = table_of(_mm512_castps_si512(_mm512_set1_ps(a.code_magnitude)));
  for (int64_t j = jb; j < je; ++j) {
    if (j + kGatherAhead < a.nnz)
      _mm_prefetch(reinterpret_cast<const char*>(a.x_codes + ids[j + kGatherAhead] * stride + w0), _MM_HINT_T0);
    const uint32_t* row = a.x_codes + ids[j] * stride;
    const __m512 w = _mm512_set1_ps(entry_weight(a, j));
    const __m512 table = a.code_row_magnitude ? table_of(_mm512_set1_epi32(int32_t(row[a.code_words]))) : shared_table;
    for (int i = 0; i < NV; ++i) {
      const __m512i field = _mm512_srlv_epi32(_mm512_set1_epi32(int32_t(row[w0 + i])), shifts);
      acc[i] = _mm512_fmadd_ps(w, _mm512_permutexvar_ps(field, table), acc[i]);
    }
  }
  for (int i = 0; i < NV; ++i) _mm512_mask_storeu_ps(v + c0 + 16 * i, i == NV - 1 ? tail : __mmask16(0xFFFF), acc[i]);
}

// R entries 8 columns at a time: the splitmix64 finalizer on 8 uint64 lanes (VPMULLQ, AVX-512DQ),
// then the two threshold compares select +sqrt(s), -sqrt(s) or 0. Same bits as rp_entry.
void fill_random_avx512(uint64_t row_state, float* v, int64_t n, uint64_t threshold, float sqrt_s) {
  const __m512i gamma8 = _mm512_set1_epi64(int64_t(kGolden * 8));
  const __m512i c1 = _mm512_set1_epi64(int64_t(0xBF58476D1CE4E5B9ull)), c2 = _mm512_set1_epi64(int64_t(0x94D049BB133111EBull));
  const __m512i t = _mm512_set1_epi64(int64_t(threshold)), ones = _mm512_set1_epi64(-1);
  const __m256 pos = _mm256_set1_ps(sqrt_s), neg = _mm256_set1_ps(-sqrt_s);
  // lane l holds row_state + (c + l + 1) * golden: mix64's own "+ golden" is folded in
  __m512i x = _mm512_add_epi64(_mm512_set1_epi64(int64_t(row_state)),
                               _mm512_mullo_epi64(_mm512_setr_epi64(1, 2, 3, 4, 5, 6, 7, 8), _mm512_set1_epi64(int64_t(kGolden))));
  int64_t c = 0;
  for (; c + 8 <= n; c += 8, x = _mm512_add_epi64(x, gamma8)) {
    __m512i h = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)), c1);
    h = _mm512_mullo_epi64(_mm512_xor_si512(h, _mm512_srli_epi64(h, 27)), c2);
    h = _mm512_xor_si512(h, _mm512_srli_epi64(h, 31));
    const __mmask8 is_pos = _mm512_cmplt_epu64_mask(h, t);
    const __mmask8 is_neg = _mm512_cmplt_epu64_mask(_mm512_xor_si512(h, ones), t);
    const __m256 r = _mm256_mask_mov_ps(_mm256_maskz_mov_ps(is_pos, pos), is_neg, neg);
    _mm256_storeu_ps(v + c, r);
  }
  for (; c < n; ++c) v[c] = rp_entry(row_state, c, threshold, sqrt_s);
}

// Sign codes of the same entries: the two compare masks of 8 columns, interleaved bit by bit, are
// half a word of 2-bit fields.
struct SpreadTable {  // kSpread.v[x]: bit k of the byte x moved to bit 2k
  uint16_t v[256];
  constexpr SpreadTable() : v() {
    for (int x = 0; x < 256; ++x)
      for (int k = 0; k < 8; ++k) v[x] = uint16_t(v[x] | (((x >> k) & 1) << (2 * k)));
  }
};
constexpr SpreadTable kSpread;

void fill_codes_avx512(uint64_t row_state, uint32_t* words, int64_t n, uint64_t threshold) {
  const int64_t n8 = n / 8 * 8;
  for (int64_t w = n8 / 16; w < code_words_of(n); ++w) words[w] = 0;  // words the tail ORs into
  const __m512i gamma8 = _mm512_set1_epi64(int64_t(kGolden * 8));
  const __m512i c1 = _mm512_set1_epi64(int64_t(0xBF58476D1CE4E5B9ull)), c2 = _mm512_set1_epi64(int64_t(0x94D049BB133111EBull));
  const __m512i t = _mm512_set1_epi64(int64_t(threshold)), not_t = _mm512_set1_epi64(int64_t(~threshold));
  __m512i x = _mm512_add_epi64(_mm512_set1_epi64(int64_t(row_state)),
                               _mm512_mullo_epi64(_mm512_setr_epi64(1, 2, 3, 4, 5, 6, 7, 8), _mm512_set1_epi64(int64_t(kGolden))));
  for (int64_t c = 0; c < n8; c += 8, x = _mm512_add_epi64(x, gamma8)) {
    __m512i h = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)), c1);
    h = _mm512_mullo_epi64(_mm512_xor_si512(h, _mm512_srli_epi64(h, 27)), c2);
    h = _mm512_xor_si512(h, _mm512_srli_epi64(h, 31));
    const uint32_t is_pos = _mm512_cmplt_epu64_mask(h, t);
    const uint32_t is_neg = _mm512_cmpgt_epu64_mask(h, not_t) & ~is_pos;  // ~h < t  <=>  h > ~t
    const uint32_t half = uint32_t(kSpread.v[is_pos]) | (uint32_t(kSpread.v[is_neg]) << 1);
    if (c & 8)
      words[c >> 4] |= half << 16;
    else
      words[c >> 4] = half;
  }
  for (int64_t c = n8; c < n; ++c) words[c >> 4] |= rp_sign_code(row_state, c, threshold) << (2 * (c & 15));
}

}  // namespace

void spmm_rows_avx512(const SpmmArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t d = a.d;
  std::vector<float> v(static_cast<size_t>(d));
  with_typed_ids(a.indices, [&](const auto& ids) {
    for (int64_t r = row_begin; r < row_end; ++r) {
      const int64_t jb = a.indptr[r], je = a.indptr[r + 1];
      prefetch_acc_src(a, r, row_end);
      for (int64_t c0 = 0; c0 < d; c0 += 128) {
        const int64_t cols = std::min<int64_t>(128, d - c0);
        const __mmask16 tail = cols % 16 ? __mmask16((1u << (cols % 16)) - 1) : __mmask16(0xFFFF);
        if (a.x_codes)
          with_vector_count(int((cols + 15) / 16), [&](auto nv) { gather_block_codes<nv>(a, ids, jb, je, c0, tail, v.data()); });
        else if (a.x_bf16)
          with_vector_count(int((cols + 31) / 32), [&](auto np) {
            gather_block_bf16<np>(a, ids, jb, je, c0, cols % 32 ? __mmask32((1u << (cols % 32)) - 1) : __mmask32(0xFFFFFFFFu),
                                  v.data());
          });
        else
          with_vector_count(int((cols + 15) / 16), [&](auto nv) { gather_block<nv>(a, ids, jb, je, c0, tail, v.data()); });
      }
      apply_row_scale(v.data(), d, a.row_scale, r);
      row_epilogue(v.data(), d, r, a.y, a.y_bf16, a.y_normalize, a.acc, a.acc_weight, a.acc_normalize, a.acc_overwrite,
                   a.acc_src, a.acc_src_bf16, a.acc_src_weight, a.acc_src_normalize, a.y_stream);
    }
  });
  end_row_stores();
}

void init_rows_avx512(const InitArgs& a, int64_t row_begin, int64_t row_end) { init_rows_impl(a, row_begin, row_end, fill_random_avx512, fill_codes_avx512); }

DegreeFlags degree_rows_avx512(const DegreeArgs& a, int64_t row_begin, int64_t row_end) { return degree_rows_impl(a, row_begin, row_end); }

}  // namespace embkern::fastrp

// AVX-512 VNNI SDC kernels for 2 bits per dimension and a few queries (nq <= kVnniMaxQueries).
//
// The blocked kernels repack every database block once per query chunk; with one or two queries that
// repack is the whole cost. Here rows are read in place: 16 code bytes -> 64 levels in bytes (VPMOVZXBD
// + shifts), and since (2Lq - c)(2Ld - c) = Ld * (4Lq - 2c) - c (2Lq - c), one VPDPBUSD per 64
// dimensions (u8 levels x s8 weights in {-6, -2, 2, 6}) plus a per-query constant gives the exact S.
// Scores and roundings are those of every other path.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "common/isa_namespace.h"
#include "common/topk.h"
#include "rbe/rbe_kernels.h"

namespace embkern::rbe {

namespace {
using Heap = TopKHeap<float, /*LargerIsBetter=*/true>;

// 16 code bytes (64 dimensions) -> 64 levels, byte 4k + t of the result = level of dimension 4k + 3 - t
// (the same permutation is applied to the query weights).
inline __m512i levels64(const uint8_t* row, int64_t bytes_left) {
  const __mmask16 m = bytes_left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << bytes_left) - 1);
  const __m512i x = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, row));
  const __m512i y = _mm512_or_si512(_mm512_or_si512(x, _mm512_slli_epi32(x, 6)),
                                    _mm512_or_si512(_mm512_slli_epi32(x, 12), _mm512_slli_epi32(x, 18)));
  return _mm512_and_si512(y, _mm512_set1_epi8(3));
}

struct Queries {
  int64_t chunks;                      // 64-dimension chunks
  std::unique_ptr<int8_t[]> w;         // [q][chunk][64] weights 4Lq - 2c in the levels64 byte order
  std::unique_ptr<int32_t[]> konst;    // [q] -c sum (2Lq - c) over real dimensions
  Queries(const uint8_t* queries, int64_t nq, const SdcShape& s)
      : chunks((s.code_bytes + 15) / 16), w(new int8_t[size_t(std::max<int64_t>(1, nq) * chunks * 64)]),
        konst(new int32_t[size_t(std::max<int64_t>(1, nq))]) {
    for (int64_t q = 0; q < nq; ++q) {
      const uint8_t* row = queries + q * s.code_bytes;
      int64_t k = 0;
      for (int64_t c = 0; c < chunks; ++c)
        for (int b = 0; b < 16; ++b) {
          const int64_t byte = 16 * c + b;
          const unsigned v = byte < s.code_bytes ? row[byte] : 0u;
          for (int t = 0; t < 4; ++t) {  // byte 4b + t holds dimension 4 * byte + 3 - t
            const int64_t d = 4 * byte + 3 - t;
            const int level = int(v >> (2 * t)) & 3;
            w[(q * chunks + c) * 64 + 4 * b + t] = int8_t(d < s.dim ? 4 * level - 6 : 0);
            if (d < s.dim) k += -3 * (2 * level - 3);
          }
        }
      konst[q] = int32_t(k);
    }
  }
};

template <class Emit>
void scan_rows(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t db_begin, int64_t db_end,
               const SdcShape& s, Emit&& emit) {
  const Queries qs(queries, nq, s);
  const int64_t chunks = qs.chunks;
  const bool has_inv = s.db_inv_norm != nullptr;
  for (int64_t j = db_begin; j < db_end; ++j) {
    const uint8_t* row = db + j * s.code_bytes;
    __m512i acc[kVnniMaxQueries];
    for (int64_t q = 0; q < nq; ++q) acc[q] = _mm512_setzero_si512();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512i lv = levels64(row + 16 * c, s.code_bytes - 16 * c);
      for (int64_t q = 0; q < nq; ++q)
        acc[q] = _mm512_dpbusd_epi32(acc[q], lv, _mm512_loadu_si512(&qs.w[(q * chunks + c) * 64]));
    }
    const float inv = has_inv ? s.db_inv_norm[j] : 1.0f;
    for (int64_t q = 0; q < nq; ++q) {
      const int32_t sv = _mm512_reduce_add_epi32(acc[q]) + qs.konst[q];
      float v = float(sv) * 0.25f;
      if (has_inv) v = v * inv;
      emit(q, j, v);
    }
  }
}
}  // namespace

void sdc_topk_scan_avx512vnni(EMBKERN_RBE_SCAN_ARGS) {
  if (nq == 0) return;
  scan_rows(queries, nq, db, db_begin, db_end, shape, [&](int64_t q, int64_t j, float v) {
    Heap heap(heaps.val + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
    if (v > heap.bar()) {
      heap.push(v, j);
      heaps.size[q] = heap.size();
    }
  });
}

void sdc_scores_avx512vnni(EMBKERN_RBE_SCORES_ARGS) {
  if (nq == 0) return;
  scan_rows(queries, nq, db, db_begin, db_end, shape,
            [&](int64_t q, int64_t j, float v) { out[q * out_stride + (j - db_begin)] = v; });
}

}  // namespace embkern::rbe

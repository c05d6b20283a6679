// AVX-512 VBMI SDC kernels for 2 bits per dimension: VPERMB lookups in per-query 64-entry tables.
//
// With 2 bits per dimension a 6-bit field of the code stream holds 3 whole dimensions, so a database
// block is repacked as one byte per (3 dimensions, row), position-major, and for each query and
// position p a 64-byte table T_p[idx] = sum_t Lq(3p+t) * Ld_t(idx) gives the partial product of
// those 3 dimensions. One VPERMB scores 64 rows at one position: ceil(dim/3)/64 lookups per pair
// against 2 * ceil(dim/64) * 4 / 8 VPOPCNTQ for bit planes (both port-5 bound on Intel), i.e.
// 1.33 vs 2 per pair at dim = 256. Bytes accumulate up to 9 lookups (9 * 27 < 256), then are
// widened into 16-bit sums of even and odd rows (dim <= kVbmiMaxDim keeps them below 2^16).
// The final S and float roundings are exactly those of every other path.
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

constexpr int64_t kBlock = 256;      // rows per repacked block (4 groups of 64)
constexpr int64_t kQueryChunk = 512;  // queries per block repack (2.8 MB of tables; 256 measured 10-30% slower)

// 6-bit field f of a 2-bit code row (stream bits 6f .. 6f+5, MSB first); 0 past the row's end.
inline unsigned field6(const uint8_t* row, int64_t code_bytes, int64_t f) {
  const int64_t bit = 6 * f, byte = bit / 8;
  unsigned w = 0;
  for (int t = 0; t < 2; ++t) w = (w << 8) | (byte + t < code_bytes ? row[byte + t] : 0u);
  return (w >> (10 - bit % 8)) & 63u;
}

inline int level_sum6(unsigned idx) { return int((idx >> 4) & 3) + int((idx >> 2) & 3) + int(idx & 3); }

// Lane l of a 64-row group's four int32 vectors (v = l / 16) holds row lane_row(l) of the group:
// even rows 0..30, even rows 32..62, odd rows 1..31, odd rows 33..63 (16-bit sums widened in halves).
constexpr int lane_row(int l) { return (l & 15) * 2 + ((l >> 4) & 1) * 32 + (l >> 5); }

struct Block {
  int64_t positions;
  std::unique_ptr<uint8_t[]> idx;  // [position][kBlock]
  alignas(64) int32_t e[kBlock];   // 2c sum Ld, in lane order (see RowOrder)
  alignas(64) float inv[kBlock];   // inverse norms in lane order (1 when none / past the rows)
  explicit Block(int64_t p) : positions(p), idx(new uint8_t[size_t(p * kBlock)]) {}
  void fill(const uint8_t* db, int64_t begin, int64_t rows, const SdcShape& s) {
    int32_t sums[kBlock];
    alignas(64) uint8_t fields[kVbmiMaxDim / 3 + 64];
    // 48 code bytes -> 64 fields (Mula's base64 trick): VPERMB puts bytes (b1, b0, b2, b1) of each
    // 3-byte group in a dword, VPMULTISHIFTQB picks the 4 fields at bit offsets 10, 4, 22, 16.
    const __m512i spread = _mm512_set_epi32(0x2e2f2d2e, 0x2b2c2a2b, 0x28292728, 0x25262425, 0x22232122, 0x1f201e1f,
                                            0x1c1d1b1c, 0x191a1819, 0x16171516, 0x13141213, 0x10110f10, 0x0d0e0c0d,
                                            0x0a0b090a, 0x07080607, 0x04050304, 0x01020001);
    const __m512i shifts = _mm512_set1_epi64(0x3036242a1016040aLL);
    const __m512i low6 = _mm512_set1_epi8(0x3f);
    for (int64_t j = 0; j < rows; ++j) {
      const uint8_t* row = db + (begin + j) * s.code_bytes;
      // the last chunk loads fewer bytes (masked, zero-filled): its fields past the code are padding 0s
      for (int64_t p = 0, c = 0; p < positions; c += 48, p += 64) {
        const int64_t nbytes = std::min<int64_t>(48, s.code_bytes - c);
        const __m512i in = _mm512_maskz_loadu_epi8(__mmask64((1ull << nbytes) - 1), row + c);
        const __m512i f = _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(spread, in)), low6);
        _mm512_store_si512(fields + p, f);
      }
      int32_t sum = 0;  // sum of levels = 2 popcount(high bits) + popcount(low bits); padding bits are 0
      for (int64_t b = 0; b < s.code_bytes; b += 8) {
        uint64_t w = 0;
        std::memcpy(&w, row + b, size_t(std::min<int64_t>(8, s.code_bytes - b)));
        sum += 2 * __builtin_popcountll(w & 0xAAAAAAAAAAAAAAAAull) + __builtin_popcountll(w & 0x5555555555555555ull);
      }
      for (int64_t q = 0; q < positions; ++q) idx[q * kBlock + j] = fields[q];
      sums[j] = 2 * 3 * sum;
    }
    for (int64_t j = rows; j < kBlock; ++j) {
      for (int64_t p = 0; p < positions; ++p) idx[p * kBlock + j] = 0;
      sums[j] = 0;
    }
    for (int64_t g = 0; g < kBlock / 64; ++g)
      for (int l = 0; l < 64; ++l) {
        const int64_t j = g * 64 + lane_row(l);
        e[g * 64 + l] = sums[j];
        inv[g * 64 + l] = (s.db_inv_norm && j < rows) ? s.db_inv_norm[begin + j] : 1.0f;
      }
  }
};

// Per-query tables [position][64] and the query part of S (kq = 2c sum Lq - dim c^2).
struct Tables {
  int64_t positions;
  std::unique_ptr<uint8_t[]> t;
  std::unique_ptr<int32_t[]> kq;
  Tables(const uint8_t* queries, int64_t nq, const SdcShape& s)
      : positions((s.dim + 2) / 3), t(new uint8_t[size_t(std::max<int64_t>(1, nq) * positions * 64)]),
        kq(new int32_t[size_t(std::max<int64_t>(1, nq))]) {
    __m512i mult[3][4];  // mult[t][l] byte i = l * (level t of index i)
    for (int t3 = 0; t3 < 3; ++t3)
      for (int l = 0; l < 4; ++l) {
        alignas(64) uint8_t m[64];
        for (int i = 0; i < 64; ++i) m[i] = uint8_t(l * ((i >> (4 - 2 * t3)) & 3));
        mult[t3][l] = _mm512_load_si512(m);
      }
    for (int64_t q = 0; q < nq; ++q) {
      const uint8_t* row = queries + q * s.code_bytes;
      int64_t sum = 0;
      for (int64_t p = 0; p < positions; ++p) {
        const unsigned f = field6(row, s.code_bytes, p);  // padding dimensions have level 0: no contribution
        sum += level_sum6(f);
        // T_p = l0 * (idx >> 4 & 3) + l1 * (idx >> 2 & 3) + l2 * (idx & 3), from precomputed multiples
        const __m512i tp = _mm512_add_epi8(_mm512_add_epi8(mult[0][(f >> 4) & 3], mult[1][(f >> 2) & 3]), mult[2][f & 3]);
        _mm512_storeu_si512(&t[(q * positions + p) * 64], tp);
      }
      kq[q] = int32_t(2 * 3 * sum - s.dim * 9);
    }
  }
};

// The 4 x 16 int32 dot products of the 4 groups of a block (lane order of RowOrder).
inline void block_dots(const Block& blk, const uint8_t* table, __m512i dots[4][4]) {
  const __m512i low8 = _mm512_set1_epi16(0x00FF);
  __m512i even[4], odd[4];
  for (int g = 0; g < 4; ++g) even[g] = odd[g] = _mm512_setzero_si512();
  const int64_t P = blk.positions;
  for (int64_t p0 = 0; p0 < P; p0 += 9) {
    const int64_t p1 = std::min<int64_t>(P, p0 + 9);
    __m512i a[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int64_t p = p0; p < p1; ++p) {
      const __m512i tab = _mm512_loadu_si512(table + p * 64);
      const uint8_t* col = blk.idx.get() + p * kBlock;
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g)
        a[g] = _mm512_add_epi8(a[g], _mm512_permutexvar_epi8(_mm512_loadu_si512(col + 64 * g), tab));
    }
#pragma GCC unroll 4
    for (int g = 0; g < 4; ++g) {
      even[g] = _mm512_add_epi16(even[g], _mm512_and_si512(a[g], low8));
      odd[g] = _mm512_add_epi16(odd[g], _mm512_srli_epi16(a[g], 8));
    }
  }
  for (int g = 0; g < 4; ++g) {
    dots[g][0] = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(even[g]));
    dots[g][1] = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(even[g], 1));
    dots[g][2] = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(odd[g]));
    dots[g][3] = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(odd[g], 1));
  }
}

// Scores of lane vector v of group g: float(4 dot - e - kq) * 2^-2 (* inv).
template <bool HasInv>
inline __m512 lane_scores(const Block& blk, __m512i dot, int g, int v, __m512i kq) {
  const __m512i e = _mm512_load_si512(blk.e + g * 64 + v * 16);
  const __m512i s = _mm512_sub_epi32(_mm512_sub_epi32(_mm512_slli_epi32(dot, 2), e), kq);
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(0.25f));
  if constexpr (HasInv) f = _mm512_mul_ps(f, _mm512_load_ps(blk.inv + g * 64 + v * 16));
  return f;
}

template <class PerQuery>
void scan(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t db_begin, int64_t db_end, const SdcShape& s,
          PerQuery&& per_query) {
  const int64_t positions = (s.dim + 2) / 3;
  Block blk(positions);
  for (int64_t q0 = 0; q0 < nq; q0 += kQueryChunk) {
    const int64_t qn = std::min(kQueryChunk, nq - q0);
    const Tables tab(queries + q0 * s.code_bytes, qn, s);
    for (int64_t b = db_begin; b < db_end; b += kBlock) {
      const int64_t rows = std::min(kBlock, db_end - b);
      blk.fill(db, b, rows, s);
      for (int64_t q = 0; q < qn; ++q) {
        __m512i dots[4][4];
        block_dots(blk, &tab.t[q * positions * 64], dots);
        per_query(q0 + q, blk, b, rows, dots, _mm512_set1_epi32(tab.kq[q]));
      }
    }
  }
}

template <bool HasInv>
void topk_impl(EMBKERN_RBE_SCAN_ARGS) {
  scan(queries, nq, db, db_begin, db_end, shape,
       [&](int64_t q, const Block& blk, int64_t first, int64_t rows, __m512i (&dots)[4][4], __m512i kq) {
         Heap heap(heaps.val + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
         for (int g = 0; g < 4 && g * 64 < rows; ++g) {
           // every lane of the group is tested against the bar from before the group
           const __m512 bar = _mm512_set1_ps(heap.bar());
           __m512 f[4];
           uint64_t any = 0;
           __mmask16 m[4];
           for (int v = 0; v < 4; ++v) {
             f[v] = lane_scores<HasInv>(blk, dots[g][v], g, v, kq);
             m[v] = _mm512_cmp_ps_mask(f[v], bar, _CMP_GT_OQ);
             any |= m[v];
           }
           if (__builtin_expect(any == 0, 1)) continue;
           for (int v = 0; v < 4; ++v) {
             alignas(64) float fv[16];
             _mm512_store_ps(fv, f[v]);
             for (uint32_t mm = m[v]; mm; mm &= mm - 1) {
               const int lane = __builtin_ctz(mm);
               const int64_t row = g * 64 + lane_row(v * 16 + lane);
               if (row < rows) heap.push(fv[lane], first + row);
             }
           }
         }
         heaps.size[q] = heap.size();
       });
}

template <bool HasInv>
void scores_impl(EMBKERN_RBE_SCORES_ARGS) {
  scan(queries, nq, db, db_begin, db_end, shape,
       [&](int64_t q, const Block& blk, int64_t first, int64_t rows, __m512i (&dots)[4][4], __m512i kq) {
         float* o = out + q * out_stride + (first - db_begin);
         for (int g = 0; g < 4 && g * 64 < rows; ++g)
           for (int v = 0; v < 4; ++v) {
             alignas(64) float fv[16];
             _mm512_store_ps(fv, lane_scores<HasInv>(blk, dots[g][v], g, v, kq));
             for (int lane = 0; lane < 16; ++lane) {
               const int64_t row = g * 64 + lane_row(v * 16 + lane);
               if (row < rows) o[row] = fv[lane];
             }
           }
       });
}
}  // namespace

void sdc_topk_scan_avx512vbmi(EMBKERN_RBE_SCAN_ARGS) {
  if (nq == 0 || db_end <= db_begin) return;
  if (shape.db_inv_norm) return topk_impl<true>(queries, nq, db, db_begin, db_end, shape, heaps);
  topk_impl<false>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx512vbmi(EMBKERN_RBE_SCORES_ARGS) {
  if (nq == 0 || db_end <= db_begin) return;
  if (shape.db_inv_norm) return scores_impl<true>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
  scores_impl<false>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe

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
#include <cmath>
#include <cstring>
#include <memory>
#include <new>

#include "common/isa_namespace.h"
#include "common/topk.h"
#include "rbe/rbe_kernels.h"

namespace embkern::rbe {

namespace {
using Heap = TopKHeap<float, /*LargerIsBetter=*/true>;

constexpr int64_t kBlock = 256;      // rows per repacked block (4 groups of 64)
// At most 256 queries per block repack: their tables (1.4 MB at dim 256) stay in L2 (512 spilled to
// L3: 6% slower at 500 queries now that the repack is cheap). Chunks are balanced (500 -> 250 + 250).
constexpr int64_t kMaxQueryChunk = 256;
inline int64_t query_chunk(int64_t nq) {
  const int64_t chunks = (nq + kMaxQueryChunk - 1) / kMaxQueryChunk;
  return std::max<int64_t>(1, (nq + chunks - 1) / std::max<int64_t>(1, chunks));
}

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

// In-place transpose of a 64 x 64 byte tile: stage b swaps bit b of the row and column indices,
// pairing rows r and r | 2^b with two VPERMT2B.
// 64-byte aligned byte buffers: every table and index load is then one cache line (new[] gives
// 16-byte alignment, and line-split loads measured ~13% slower in the lookup loop).
struct FreeAligned {
  void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(64)); }
};
using AlignedBytes = std::unique_ptr<uint8_t[], FreeAligned>;
inline AlignedBytes aligned_bytes(int64_t n) {
  return AlignedBytes(static_cast<uint8_t*>(::operator new[](size_t(n), std::align_val_t(64))));
}

struct TransposeIdx {
  alignas(64) uint8_t lo[6][64], hi[6][64];
  constexpr TransposeIdx() : lo{}, hi{} {
    for (int b = 0; b < 6; ++b)
      for (int c = 0; c < 64; ++c) {
        const int sb = 1 << b;
        lo[b][c] = uint8_t((c & sb) ? 64 + (c ^ sb) : c);  // new[r][c] = old[r | c_b][c & ~2^b]
        hi[b][c] = uint8_t((c & sb) ? 64 + c : (c | sb));  // new[r | 2^b][c] = old[r | c_b][c | 2^b]
      }
  }
};
constexpr TransposeIdx kTransposeIdx{};

inline void transpose64x64(uint8_t (*t)[64]) {
  for (int b = 0; b < 6; ++b) {
    const int sb = 1 << b;
    const __m512i ilo = _mm512_load_si512(kTransposeIdx.lo[b]), ihi = _mm512_load_si512(kTransposeIdx.hi[b]);
    for (int r = 0; r < 64; ++r) {
      if (r & sb) continue;
      const __m512i a = _mm512_load_si512(t[r]), bv = _mm512_load_si512(t[r | sb]);
      _mm512_store_si512(t[r], _mm512_permutex2var_epi8(a, ilo, bv));
      _mm512_store_si512(t[r | sb], _mm512_permutex2var_epi8(a, ihi, bv));
    }
  }
}

struct Block {
  int64_t positions;
  AlignedBytes idx;  // [position][kBlock]
  alignas(64) int32_t e[kBlock];   // 2c sum Ld, in lane order (see RowOrder)
  alignas(64) float inv[kBlock];   // inverse norms in lane order (1 when none / past the rows)
  // e mod 2^16 in 16-bit word order: e16[g * 64 + h * 32 + i] = e of row g * 64 + 2i + h (h = 0 even, 1 odd)
  alignas(64) int16_t e16[kBlock];
  explicit Block(int64_t p) : positions(p), idx(aligned_bytes(p * kBlock)) {}
  void fill(const uint8_t* db, int64_t begin, int64_t rows, const SdcShape& s) {
    int32_t sums[kBlock];
    for (int64_t j = 0; j < kBlock; ++j) {
      int32_t sum = 0;  // sum of levels = 2 popcount(high bits) + popcount(low bits); padding bits are 0
      const uint8_t* row = db + (begin + j) * s.code_bytes;
      for (int64_t b = 0; j < rows && b < s.code_bytes; b += 8) {
        uint64_t w = 0;
        if (b + 8 <= s.code_bytes)
          std::memcpy(&w, row + b, 8);  // a fixed-size copy is one load; a variable one is a call
        else
          std::memcpy(&w, row + b, size_t(s.code_bytes - b));
        sum += 2 * __builtin_popcountll(w & 0xAAAAAAAAAAAAAAAAull) + __builtin_popcountll(w & 0x5555555555555555ull);
      }
      sums[j] = 2 * 3 * sum;
    }
    // 48 code bytes -> 64 fields (Mula's base64 trick): VPERMB puts bytes (b1, b0, b2, b1) of each
    // 3-byte group in a dword, VPMULTISHIFTQB picks the 4 fields at bit offsets 10, 4, 22, 16.
    // Tiles of 64 rows x 64 positions are then transposed in registers (6 stages of VPERMT2B)
    // instead of one scalar byte store per (position, row).
    const __m512i spread = _mm512_set_epi32(0x2e2f2d2e, 0x2b2c2a2b, 0x28292728, 0x25262425, 0x22232122, 0x1f201e1f,
                                            0x1c1d1b1c, 0x191a1819, 0x16171516, 0x13141213, 0x10110f10, 0x0d0e0c0d,
                                            0x0a0b090a, 0x07080607, 0x04050304, 0x01020001);
    const __m512i shifts = _mm512_set1_epi64(0x3036242a1016040aLL);
    const __m512i low6 = _mm512_set1_epi8(0x3f);
    alignas(64) uint8_t tile[64][64];  // [row][position], then [position][row]
    for (int64_t g = 0; g < kBlock / 64; ++g)
      for (int64_t p0 = 0, c = 0; p0 < positions; c += 48, p0 += 64) {
        const int64_t nbytes = std::min<int64_t>(48, s.code_bytes - c);
        for (int64_t r = 0; r < 64; ++r) {
          __m512i f = _mm512_setzero_si512();  // rows past the block's end: all fields 0
          if (g * 64 + r < rows) {
            // the last chunk loads fewer bytes (masked, zero-filled): its fields past the code are padding 0s
            const __m512i in = _mm512_maskz_loadu_epi8(__mmask64((1ull << nbytes) - 1),
                                                       db + (begin + g * 64 + r) * s.code_bytes + c);
            f = _mm512_and_si512(_mm512_multishift_epi64_epi8(shifts, _mm512_permutexvar_epi8(spread, in)), low6);
          }
          _mm512_store_si512(tile[r], f);
        }
        transpose64x64(tile);
        const int64_t np = std::min<int64_t>(64, positions - p0);
        for (int64_t p = 0; p < np; ++p)
          _mm512_storeu_si512(idx.get() + (p0 + p) * kBlock + g * 64, _mm512_load_si512(tile[p]));
      }
    for (int64_t g = 0; g < kBlock / 64; ++g)
      for (int l = 0; l < 64; ++l) {
        const int64_t j = g * 64 + lane_row(l);
        e[g * 64 + l] = sums[j];
        inv[g * 64 + l] = (s.db_inv_norm && j < rows) ? s.db_inv_norm[begin + j] : 1.0f;
        e16[g * 64 + (l & 1) * 32 + l / 2] = int16_t(uint16_t(sums[g * 64 + l]));
      }
  }
};

// Part q of qn of the prefetch of database rows [begin, end) into L2: the next block's rows arrive
// while the queries scan the current one (fill would otherwise wait on memory, about 10% of the time).
[[gnu::always_inline]] inline void prefetch_part(const uint8_t* db, int64_t begin, int64_t end, int64_t code_bytes, int64_t q, int64_t qn) {
  const int64_t first = begin * code_bytes / 64, last = (end * code_bytes + 63) / 64;
  const int64_t per = (last - first + qn - 1) / qn;
  for (int64_t l = first + q * per, e = std::min(last, l + per); l < e; ++l)
    _mm_prefetch(reinterpret_cast<const char*>(db + l * 64), _MM_HINT_T1);
}

// Per-query tables [position][64] and the query part of S (kq = 2c sum Lq - dim c^2).
struct Tables {
  int64_t positions;
  AlignedBytes t;
  std::unique_ptr<int32_t[]> kq;
  Tables(const uint8_t* queries, int64_t nq, const SdcShape& s)
      : positions((s.dim + 2) / 3), t(aligned_bytes(std::max<int64_t>(1, nq) * positions * 64)),
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

// dim <= kInt16MaxDim: |S| <= 9 dim < 2^15, so S is computed exactly in wrapping 16-bit lanes.
constexpr int64_t kInt16MaxDim = 3640;

// The 16-bit dot products of the 4 groups of a block: dot16[g][h] word i = row g * 64 + 2i + h.
// Bytes of 9 lookups go to `total` (16-bit words even + 256 odd, wrapping) and `odd` (a >> 8);
// even = total - (odd << 8) mod 2^16 is exact because even sums stay below 2^16: 3 ops per flush, not 4.
inline void block_dots16(const Block& blk, const uint8_t* table, __m512i dot16[4][2]) {
  __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0, o0 = t0, o1 = t0, o2 = t0, o3 = t0;
  const int64_t P = blk.positions;
  const uint8_t* idx = blk.idx.get();
  // separate accumulator variables and a fixed 9-lookup body: the compiler keeps the four byte sums
  // in registers without the copies it adds around an array in a variable-count loop
  auto chunk = [&](int64_t p0, int64_t n) __attribute__((always_inline)) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    auto lookup = [&](int64_t p) __attribute__((always_inline)) {
      const __m512i tab = _mm512_loadu_si512(table + p * 64);
      const uint8_t* col = idx + p * kBlock;
      a0 = _mm512_add_epi8(a0, _mm512_permutexvar_epi8(_mm512_loadu_si512(col), tab));
      a1 = _mm512_add_epi8(a1, _mm512_permutexvar_epi8(_mm512_loadu_si512(col + 64), tab));
      a2 = _mm512_add_epi8(a2, _mm512_permutexvar_epi8(_mm512_loadu_si512(col + 128), tab));
      a3 = _mm512_add_epi8(a3, _mm512_permutexvar_epi8(_mm512_loadu_si512(col + 192), tab));
    };
    if (n == 9) {
#pragma GCC unroll 9
      for (int i = 0; i < 9; ++i) lookup(p0 + i);
    } else {
      for (int64_t i = 0; i < n; ++i) lookup(p0 + i);
    }
    t0 = _mm512_add_epi16(t0, a0);
    t1 = _mm512_add_epi16(t1, a1);
    t2 = _mm512_add_epi16(t2, a2);
    t3 = _mm512_add_epi16(t3, a3);
    o0 = _mm512_add_epi16(o0, _mm512_srli_epi16(a0, 8));
    o1 = _mm512_add_epi16(o1, _mm512_srli_epi16(a1, 8));
    o2 = _mm512_add_epi16(o2, _mm512_srli_epi16(a2, 8));
    o3 = _mm512_add_epi16(o3, _mm512_srli_epi16(a3, 8));
  };
  int64_t p0 = 0;
  for (; p0 + 9 <= P; p0 += 9) chunk(p0, 9);
  if (p0 < P) chunk(p0, P - p0);
  const __m512i t[4] = {t0, t1, t2, t3}, o[4] = {o0, o1, o2, o3};
  for (int g = 0; g < 4; ++g) {
    dot16[g][0] = _mm512_sub_epi16(t[g], _mm512_slli_epi16(o[g], 8));
    dot16[g][1] = o[g];
  }
}

// The 4 x 16 int32 dot products of the 4 groups of a block (lane order of lane_row): the 16-bit
// sums of block_dots16 are exact unsigned values for any dim <= kVbmiMaxDim, widened.
inline void block_dots(const Block& blk, const uint8_t* table, __m512i dots[4][4]) {
  __m512i dot16[4][2];
  block_dots16(blk, table, dot16);
  for (int g = 0; g < 4; ++g) {
    dots[g][0] = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(dot16[g][0]));
    dots[g][1] = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(dot16[g][0], 1));
    dots[g][2] = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(dot16[g][1]));
    dots[g][3] = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(dot16[g][1], 1));
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
  const int64_t chunk = query_chunk(nq);
  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t qn = std::min(chunk, nq - q0);
    const Tables tab(queries + q0 * s.code_bytes, qn, s);
    for (int64_t b = db_begin; b < db_end; b += kBlock) {
      const int64_t rows = std::min(kBlock, db_end - b);
      blk.fill(db, b, rows, s);
      for (int64_t q = 0; q < qn; ++q) {
        prefetch_part(db, b + kBlock, std::min(db_end, b + 2 * kBlock), s.code_bytes, q, qn);
        __m512i dots[4][4];
        block_dots(blk, &tab.t[q * positions * 64], dots);
        per_query(q0 + q, blk, b, rows, dots, _mm512_set1_epi32(tab.kq[q]));
      }
    }
  }
}

// Without inverse norms the score float(S) / 4 is exact and increasing in S, so for the integer S
// score > bar <=> S > floor(4 bar): the bar test is one 16-bit compare per 32 rows, and only lanes
// that pass are converted (the same float(S) * 0.25f as every path).
void topk_int16(EMBKERN_RBE_SCAN_ARGS) {
  const SdcShape& s = shape;
  const int64_t positions = (s.dim + 2) / 3;
  Block blk(positions);
  auto int_bar = [](float bar) {  // floor(4 bar) clamped to int16; |S| <= 32760 keeps the clamp exact
    const float t = std::floor(4.0f * bar);
    return int16_t(t < -32768.0f ? -32768.0f : t > 32767.0f ? 32767.0f : t);
  };
  const int64_t chunk = query_chunk(nq);
  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t qn = std::min(chunk, nq - q0);
    const Tables tab(queries + q0 * s.code_bytes, qn, s);
    for (int64_t b = db_begin; b < db_end; b += kBlock) {
      const int64_t rows = std::min(kBlock, db_end - b);
      blk.fill(db, b, rows, s);
      for (int64_t q = 0; q < qn; ++q) {
        __m512i dot16[4][2];
        block_dots16(blk, &tab.t[q * positions * 64], dot16);
        const __m512i kq = _mm512_set1_epi16(int16_t(uint16_t(uint32_t(tab.kq[q]))));
        prefetch_part(db, b + kBlock, std::min(db_end, b + 2 * kBlock), s.code_bytes, q, qn);
        Heap heap(heaps.val + (q0 + q) * heaps.k, heaps.idx + (q0 + q) * heaps.k, heaps.k, heaps.size[q0 + q]);
        __m512i bar = _mm512_set1_epi16(int_bar(heap.bar()));
        for (int g = 0; g < 4 && g * 64 < rows; ++g) {
          __m512i sv[2];
          __mmask32 m[2];
          for (int h = 0; h < 2; ++h) {
            sv[h] = _mm512_sub_epi16(_mm512_sub_epi16(_mm512_slli_epi16(dot16[g][h], 2),
                                                      _mm512_load_si512(blk.e16 + g * 64 + h * 32)), kq);
            m[h] = _mm512_cmpgt_epi16_mask(sv[h], bar);
          }
          if (__builtin_expect((m[0] | m[1]) == 0, 1)) continue;
          // every lane of the group is tested against the bar from before the group (the heap's
          // contents do not depend on the order of the pushes)
          alignas(64) int16_t sw[2][32];
          _mm512_store_si512(sw[0], sv[0]);
          _mm512_store_si512(sw[1], sv[1]);
          for (int h = 0; h < 2; ++h)
            for (uint32_t x = m[h]; x; x &= x - 1) {
              const int r = 2 * __builtin_ctz(x) + h;
              if (g * 64 + r < rows) heap.push(float(int32_t(sw[h][r >> 1])) * 0.25f, b + g * 64 + r);
            }
          bar = _mm512_set1_epi16(int_bar(heap.bar()));
        }
        heaps.size[q0 + q] = heap.size();
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
  if (shape.dim <= kInt16MaxDim) return topk_int16(queries, nq, db, db_begin, db_end, shape, heaps);
  topk_impl<false>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx512vbmi(EMBKERN_RBE_SCORES_ARGS) {
  if (nq == 0 || db_end <= db_begin) return;
  if (shape.db_inv_norm) return scores_impl<true>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
  scores_impl<false>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe

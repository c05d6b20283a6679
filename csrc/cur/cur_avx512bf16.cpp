// AVX-512 BF16 fused score + top-k for bfloat16 E: VDPBF16PS does 32 multiply-adds per instruction,
// twice the float32 FMA rate, so the compute-bound case (many queries) runs twice as fast. The other
// paths reproduce its numerics exactly (cur_common.h), so results stay identical on every path.
// Few queries (bandwidth bound) and other dtypes use the AVX-512 kernels.
#include "cur/cur_avx512_lanes.h"

namespace embkern::cur {

namespace {

constexpr int64_t kL = 16, kSW = 32;  // lanes, columns per strip

inline uint32_t bf16_bits(float x) {
  const float r = round_to_bf16(x);
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return u >> 16;
}

// Pair-interleaved strips: strip s holds panel[s*P*SW + p*SW + c] = bf16 E[2p][col] | E[2p+1][col] << 16
// for col = col0 + s*SW + c (zero past ncols, and in the high half when 2p + 1 == r).
void pack_pairs(const uint16_t* E, int64_t ld, int64_t r, int64_t col0, int64_t ncols, uint32_t* panel) {
  const int64_t pairs = (r + 1) / 2;
  const int64_t padded = (ncols + kSW - 1) / kSW * kSW;
  const int64_t full_vecs = ncols / kL;
  for (int64_t p = 0; p < pairs; ++p) {
    const uint16_t* e0 = E + 2 * p * ld + col0;
    const uint16_t* e1 = 2 * p + 1 < r ? E + (2 * p + 1) * ld + col0 : nullptr;
    uint32_t* dst = panel + p * kSW;
    for (int64_t v = 0; v < full_vecs; ++v) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(e0 + v * kL)));
      const __m512i hi = e1 ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                                    reinterpret_cast<const __m256i*>(e1 + v * kL))), 16)
                            : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + (v / 2) * pairs * kSW + (v % 2) * kL, _mm512_or_si512(lo, hi));
    }
    for (int64_t c = full_vecs * kL; c < padded; ++c)
      dst[(c / kSW) * pairs * kSW + c % kSW] =
          c < ncols ? uint32_t(e0[c]) | (e1 ? uint32_t(e1[c]) << 16 : 0u) : 0u;
  }
}

// Queries [q0, q0 + MB) x one strip (32 columns from col0); cpairs: [nq, P] C pairs as bf16 dwords.
template <int MB>
inline void tile_pairs(const TileCtx& t, const uint32_t* cpairs, int64_t pairs, const uint32_t* strip, int64_t q0,
                       int64_t col0) {
  __m512 acc[MB][2];
#pragma GCC unroll 16
  for (int b = 0; b < MB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
  const uint32_t* c = cpairs + q0 * pairs;
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512i e0 = _mm512_loadu_si512(strip + p * kSW), e1 = _mm512_loadu_si512(strip + p * kSW + kL);
#pragma GCC unroll 16
    for (int b = 0; b < MB; ++b) {
      const __m512i cb = _mm512_set1_epi32(int(c[b * pairs + p]));
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], (__m512bh)cb, (__m512bh)e0);
      acc[b][1] = _mm512_dpbf16_ps(acc[b][1], (__m512bh)cb, (__m512bh)e1);
    }
  }
  alignas(64) float out[MB][1][2][kL];
#pragma GCC unroll 16
  for (int b = 0; b < MB; ++b) {
    _mm512_store_ps(out[b][0][0], acc[b][0]);
    _mm512_store_ps(out[b][0][1], acc[b][1]);
  }
  offer_tile<V512, MB, 1>(t, out, q0, col0);
}

void scan_pairs(EMBKERN_CUR_SCAN_ARGS) {
  (void)etype;
  (void)scales;
  const uint16_t* Eb = static_cast<const uint16_t*>(E);
  const int64_t pairs = (r + 1) / 2;
  std::vector<uint32_t> cpairs(size_t(nq * pairs));
  for (int64_t q = 0; q < nq; ++q)
    for (int64_t p = 0; p < pairs; ++p)
      cpairs[q * pairs + p] = bf16_bits(C[q * r + 2 * p]) | (2 * p + 1 < r ? bf16_bits(C[q * r + 2 * p + 1]) << 16 : 0u);
  std::vector<float> bar(size_t(nq), 0.0f);
  std::vector<uint8_t> full(size_t(nq), 0);
  for (int64_t q = 0; q < nq; ++q) {
    full[q] = heaps.size[q] == heaps.k;
    if (full[q]) bar[q] = heaps.vals[q * heaps.k];
  }
  const TileCtx t{C, r, col_end, heaps, ex, QueryBars{bar.data(), full.data()}};
  // Panel: about 256 KB (L2-resident), a multiple of the strip width, at most 512 columns.
  int64_t nb = (int64_t(64) * 1024) / std::max<int64_t>(pairs, 1);
  nb = std::max<int64_t>(kSW, std::min<int64_t>(512, nb / kSW * kSW));
  std::vector<uint32_t> panel(size_t(std::max<int64_t>(pairs, 1) * nb));
  const int64_t tiles = (nq + V512::kMaxRows - 1) / V512::kMaxRows;
  const int64_t rows_per_tile = (nq + tiles - 1) / tiles;
  const int64_t strip_stride = pairs * kSW;
  for (int64_t p0 = col_begin; p0 < col_end; p0 += nb) {
    const int64_t ncols = std::min(nb, col_end - p0);
    const int64_t nstrips = (ncols + kSW - 1) / kSW;
    pack_pairs(Eb, ld, r, p0, ncols, panel.data());
    for (int64_t s = 0; s < nstrips; ++s) {
      const uint32_t* strip = panel.data() + s * strip_stride;
      for (int64_t q0 = 0; q0 < nq; q0 += rows_per_tile) {
        const int64_t mb = std::min(rows_per_tile, nq - q0);
        dispatch_rows(mb, [&]<int MB>() { tile_pairs<MB>(t, cpairs.data(), pairs, strip, q0, p0 + s * kSW); });
      }
    }
  }
}

}  // namespace

void score_topk_scan_avx512bf16(EMBKERN_CUR_SCAN_ARGS) {
  if (etype == kBF16 && nq > 4 && heaps.k > 0 && col_begin < col_end)
    return scan_pairs(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
  score_topk_scan_vec<V512>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
}

}  // namespace embkern::cur

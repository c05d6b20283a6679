// Helpers shared by the SDC kernels of every ISA (compiled per ISA; see common/isa_namespace.h):
// level codes -> bit-plane words, database block transposition, query preparation.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common/isa_namespace.h"
#include "common/topk.h"
#include "rbe/rbe_kernels.h"

namespace embkern::rbe {
inline namespace EMBKERN_ISA_NS {

using SdcHeap = TopKHeap<float, /*LargerIsBetter=*/true>;

// Bytes [off, off + 8) of a code row as a little-endian word; bytes past the row's end read as 0.
inline uint64_t load_le(const uint8_t* row, int64_t code_bytes, int64_t off) {
  if (off >= code_bytes) return 0;
  uint64_t v = 0;
  std::memcpy(&v, row + off, size_t(std::min<int64_t>(8, code_bytes - off)));
  return v;
}

// Bits 0, 2, 4, ..., 62 of x gathered into bits 0..31.
inline uint64_t even_bits(uint64_t x) {
  x &= 0x5555555555555555ull;
  x = (x | (x >> 1)) & 0x3333333333333333ull;
  x = (x | (x >> 2)) & 0x0F0F0F0F0F0F0F0Full;
  x = (x | (x >> 4)) & 0x00FF00FF00FF00FFull;
  x = (x | (x >> 8)) & 0x0000FFFF0000FFFFull;
  return (x | (x >> 16)) & 0xFFFFFFFFull;
}

// Bits 0, 4, 8, ..., 60 of x gathered into bits 0..15.
inline uint64_t every_fourth_bit(uint64_t x) {
  x &= 0x1111111111111111ull;
  x = (x | (x >> 3)) & 0x0303030303030303ull;
  x = (x | (x >> 6)) & 0x000F000F000F000Full;
  x = (x | (x >> 12)) & 0x000000FF000000FFull;
  return (x | (x >> 24)) & 0xFFFFull;
}

// Bit plane i (0 = most significant) word w of a code row: one bit per dimension 64w .. 64w+63 in
// a fixed order (the same for queries and database, so AND + popcount never sees the order);
// dimensions past `dim` are 0 because padding bits of a code are 0.
// Within a byte the stream is MSB first: with bits = 2 the byte holds d0 d0 d1 d1 d2 d2 d3 d3, so
// (little-endian word) the most significant plane sits on odd bit positions; with bits = 4 plane i
// sits on positions = 3 - i (mod 4).
inline void row_planes(const uint8_t* row, int64_t dim, int bits, int64_t code_bytes, uint64_t* planes,
                       int64_t plane_stride) {
  const int64_t words = sdc_plane_words(dim);
  switch (bits) {
    case 1:
      for (int64_t w = 0; w < words; ++w) planes[w] = load_le(row, code_bytes, 8 * w);
      return;
    case 2:
      for (int64_t w = 0; w < words; ++w) {
        const uint64_t lo = load_le(row, code_bytes, 16 * w), hi = load_le(row, code_bytes, 16 * w + 8);
        planes[w] = even_bits(lo >> 1) | (even_bits(hi >> 1) << 32);
        planes[plane_stride + w] = even_bits(lo) | (even_bits(hi) << 32);
      }
      return;
    case 4:
      for (int64_t w = 0; w < words; ++w) {
        uint64_t p[4] = {0, 0, 0, 0};
        for (int c = 0; c < 4; ++c) {
          const uint64_t x = load_le(row, code_bytes, 32 * w + 8 * c);
          for (int i = 0; i < 4; ++i) p[i] |= every_fourth_bit(x >> (3 - i)) << (16 * c);
        }
        for (int i = 0; i < 4; ++i) planes[i * plane_stride + w] = p[i];
      }
      return;
    default: {  // 3 bits: levels straddle bytes; read each level from a 16-bit big-endian window
      for (int i = 0; i < bits; ++i) std::memset(planes + i * plane_stride, 0, size_t(words) * 8);
      for (int64_t d = 0; d < dim; ++d) {
        const int64_t p = d * bits, byte = p / 8;
        const uint32_t window = (uint32_t(row[byte]) << 8) | (byte + 1 < code_bytes ? row[byte + 1] : 0u);
        const uint32_t level = (window >> (16 - bits - p % 8)) & ((1u << bits) - 1);
        for (int i = 0; i < bits; ++i)
          planes[i * plane_stride + d / 64] |= uint64_t((level >> (bits - 1 - i)) & 1) << (d % 64);
      }
    }
  }
}

// Sum of a row's levels from its planes: sum_i 2^(u-i) popcount(plane_i).
inline int64_t level_sum(const uint64_t* planes, int64_t plane_stride, int64_t words, int bits) {
  int64_t s = 0;
  for (int i = 0; i < bits; ++i) {
    int64_t c = 0;
    for (int64_t w = 0; w < words; ++w) c += __builtin_popcountll(planes[i * plane_stride + w]);
    s += c << (bits - 1 - i);
  }
  return s;
}

// Queries as planes plus the query-only part of S: S = 4 dot - e_j - kq with
// e_j = 2c sum Ld (per database row) and kq = 2c sum Lq - dim c^2.
struct QueryPlanes {
  int64_t words;
  std::unique_ptr<uint64_t[]> planes;  // [nq][bits][words]
  std::unique_ptr<int64_t[]> kq;       // [nq]
  QueryPlanes(const uint8_t* queries, int64_t nq, const SdcShape& s) : words(sdc_plane_words(s.dim)) {
    const int64_t c = (int64_t(1) << s.bits) - 1, per = s.bits * words;
    planes.reset(new uint64_t[size_t(std::max<int64_t>(1, nq * per))]);
    kq.reset(new int64_t[size_t(std::max<int64_t>(1, nq))]);
    for (int64_t q = 0; q < nq; ++q) {
      uint64_t* p = &planes[q * per];
      row_planes(queries + q * s.code_bytes, s.dim, s.bits, s.code_bytes, p, words);
      kq[q] = 2 * c * level_sum(p, words, words, s.bits) - s.dim * c * c;
    }
  }
  const uint64_t* row(int64_t q, int bits) const { return &planes[q * bits * words]; }
};

constexpr int64_t kDbBlock = 512;            // rows per transposed block (a multiple of every lane count)
constexpr int64_t kQueryChunkBytes = 32768;  // query plane words scanned per database block

// A transposed database block: word w of plane i of row j at words[(i * W + w) * kDbBlock + j],
// e[j] = 2c sum Ld, inv[j] = the row's inverse norm (1 when none; 1 past the block's rows).
struct DbBlock {
  int64_t words;
  int bits;
  std::unique_ptr<uint64_t[]> data;
  alignas(64) int64_t e[kDbBlock];
  alignas(64) float inv[kDbBlock];
  DbBlock(const SdcShape& s) : words(sdc_plane_words(s.dim)), bits(s.bits) {
    data.reset(new uint64_t[size_t(s.bits * words * kDbBlock)]);
  }
  void fill(const uint8_t* db, int64_t begin, int64_t rows, const SdcShape& s) {
    const int64_t c = (int64_t(1) << s.bits) - 1;
    uint64_t tmp[4 * 64];  // one row's planes when they fit, else written in place below
    const int64_t per = s.bits * words;
    std::unique_ptr<uint64_t[]> big;
    uint64_t* rowp = tmp;
    if (per > int64_t(sizeof(tmp) / 8)) {
      big.reset(new uint64_t[size_t(per)]);
      rowp = big.get();
    }
    for (int64_t j = 0; j < rows; ++j) {
      row_planes(db + (begin + j) * s.code_bytes, s.dim, s.bits, s.code_bytes, rowp, words);
      for (int64_t t = 0; t < per; ++t) data[t * kDbBlock + j] = rowp[t];
      e[j] = 2 * c * level_sum(rowp, words, words, s.bits);
      inv[j] = s.db_inv_norm ? s.db_inv_norm[begin + j] : 1.0f;
    }
    for (int64_t j = rows; j < kDbBlock; ++j) {
      // padding lanes: computed but never reported
      for (int64_t t = 0; t < per; ++t) data[t * kDbBlock + j] = 0;
      e[j] = 0;
      inv[j] = 1.0f;
    }
  }
};

inline int64_t query_chunk_rows(int64_t bits, int64_t words) {
  const int64_t rows = kQueryChunkBytes / (8 * bits * words);
  return rows < 16 ? 16 : rows;
}

// 2^-2u as a float: exact.
inline float sdc_scale(int bits) { return 1.0f / float(int64_t(1) << (2 * (bits - 1))); }

// The one formula every path uses (see rbe_kernels.h).
inline float sdc_score(int64_t s, float scale, float inv, bool has_inv) {
  float v = float(s) * scale;
  if (has_inv) v = v * inv;
  return v;
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::rbe

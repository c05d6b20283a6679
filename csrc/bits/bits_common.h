// Helpers shared by the bits kernels of every ISA (compiled per ISA; see common/isa_namespace.h).
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>

#include "bits/bits_kernels.h"
#include "common/isa_namespace.h"
#include "common/topk.h"

namespace embkern::bits {
inline namespace EMBKERN_ISA_NS {

using HammingHeap = TopKHeap<int32_t, /*LargerIsBetter=*/false>;

// Word w of a code row, the bytes past the row's end read as 0.
inline uint64_t load_code_word(const uint8_t* row, int64_t code_bytes, int64_t w) {
  uint64_t v = 0;
  const int64_t off = w * 8;
  const int64_t n = code_bytes - off < 8 ? code_bytes - off : 8;
  std::memcpy(&v, row + off, size_t(n));
  return v;
}

// Rows [0, n) of `codes` as words: out[r * words + w].
inline std::unique_ptr<uint64_t[]> codes_as_words(const uint8_t* codes, int64_t n, int64_t code_bytes) {
  const int64_t words = words_per_code(code_bytes);
  std::unique_ptr<uint64_t[]> out(new uint64_t[size_t(n * words)]);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t w = 0; w < words; ++w) out[r * words + w] = load_code_word(codes + r * code_bytes, code_bytes, w);
  return out;
}

// Database rows [begin, begin + count) transposed into `out` (word-major): out[w * stride + j]
// is word w of row begin + j. Vector kernels then read one word of `lanes` rows with one load.
inline void transpose_block(const uint8_t* db, int64_t begin, int64_t count, int64_t code_bytes, int64_t stride,
                            uint64_t* out) {
  const int64_t words = words_per_code(code_bytes);
  if (code_bytes % 8 == 0) {
    for (int64_t j = 0; j < count; ++j) {
      const uint8_t* row = db + (begin + j) * code_bytes;
      for (int64_t w = 0; w < words; ++w) std::memcpy(&out[w * stride + j], row + 8 * w, 8);
    }
  } else {
    for (int64_t j = 0; j < count; ++j) {
      const uint8_t* row = db + (begin + j) * code_bytes;
      for (int64_t w = 0; w < words; ++w) out[w * stride + j] = load_code_word(row, code_bytes, w);
    }
  }
}

// Blocking shared by the vector kernels: a database block is transposed once and scanned by a
// chunk of queries whose words stay in L1/L2.
constexpr int64_t kDbBlock = 512;           // rows per transposed block (multiple of every lane count)
constexpr int64_t kQueryChunkBytes = 32768; // query words scanned per database block

inline int64_t query_chunk_rows(int64_t words) {
  const int64_t rows = kQueryChunkBytes / (8 * words);
  return rows < 16 ? 16 : rows;
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::bits

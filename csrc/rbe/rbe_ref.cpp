// Portable scalar twin of the rbe kernels (the oracle every vector path must match bit for bit),
// plus the encoder epilogue and the level converters, which are memory bound and stay portable.
#include <cmath>

#include "rbe/rbe_common.h"

namespace embkern::rbe {

namespace {
// sum_{i,j} 2^(2u-i-j) popcount(Q_i AND D_j), by Horner over s = i + j as the vector paths do.
int64_t plane_dot(const uint64_t* qp, const uint64_t* dp, int64_t words, int bits) {
  int64_t acc[7] = {0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < bits; ++i)
    for (int j = 0; j < bits; ++j)
      for (int64_t w = 0; w < words; ++w) acc[i + j] += __builtin_popcountll(qp[i * words + w] & dp[j * words + w]);
  int64_t dot = acc[0];
  for (int s = 1; s < 2 * bits - 1; ++s) dot = 2 * dot + acc[s];
  return dot;
}

// Calls fn(q, j, score) for every query and row j in [db_begin, db_end), row by row.
template <class Fn>
void for_each_score(const uint8_t* queries, int64_t nq, const uint8_t* db, int64_t db_begin, int64_t db_end,
                    const SdcShape& s, Fn&& fn) {
  const QueryPlanes qp(queries, nq, s);
  const int64_t words = qp.words, c = (int64_t(1) << s.bits) - 1;
  const float scale = sdc_scale(s.bits);
  std::unique_ptr<uint64_t[]> row(new uint64_t[size_t(s.bits * words)]);
  for (int64_t j = db_begin; j < db_end; ++j) {
    row_planes(db + j * s.code_bytes, s.dim, s.bits, s.code_bytes, row.get(), words);
    const int64_t e = 2 * c * level_sum(row.get(), words, words, s.bits);
    const float inv = s.db_inv_norm ? s.db_inv_norm[j] : 1.0f;
    for (int64_t q = 0; q < nq; ++q) {
      const int64_t sv = 4 * plane_dot(qp.row(q, s.bits), row.get(), words, s.bits) - e - qp.kq[q];
      fn(q, j, sdc_score(sv, scale, inv, s.db_inv_norm != nullptr));
    }
  }
}
}  // namespace

void sdc_topk_scan_scalar(EMBKERN_RBE_SCAN_ARGS) {
  if (nq == 0) return;
  for_each_score(queries, nq, db, db_begin, db_end, shape, [&](int64_t q, int64_t j, float v) {
    SdcHeap heap(heaps.val + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
    if (v > heap.bar()) {
      heap.push(v, j);
      heaps.size[q] = heap.size();
    }
  });
}

void sdc_scores_scalar(EMBKERN_RBE_SCORES_ARGS) {
  if (nq == 0) return;
  for_each_score(queries, nq, db, db_begin, db_end, shape,
                 [&](int64_t q, int64_t j, float v) { out[q * out_stride + (j - db_begin)] = v; });
}

// ---- encoder epilogue and converters ------------------------------------------------------------------

void rbe_residual_f32(const float* x, const float* h, int64_t n, int64_t d, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    const float* hr = h + r * d;
    double ss = 0;
    for (int64_t t = 0; t < d; ++t) ss += double(hr[t]) * hr[t];
    const float inv = float(1.0 / std::max(std::sqrt(ss), 1e-12));
    const float* xr = x + r * d;
    float* o = out + r * d;
    for (int64_t t = 0; t < d; ++t) o[t] = xr[t] - hr[t] * inv;
  }
}

void rbe_sign_step_f32(const float* pre, const uint8_t* levels_in, int64_t n, int64_t m, int step, uint8_t* levels_out,
                       float* b) {
  const int c = (2 << step) - 1;
  const float scale = 1.0f / float(1 << step);
  const int64_t total = n * m;
  for (int64_t t = 0; t < total; ++t) {
    const int level = (levels_in ? 2 * levels_in[t] : 0) + (pre[t] > 0.0f ? 1 : 0);  // NaN -> 0, as pack_bits
    levels_out[t] = uint8_t(level);
    b[t] = float(2 * level - c) * scale;
  }
}

void rbe_pack_levels(const uint8_t* levels, int64_t n, int64_t dim, int bits, uint8_t* codes, float* inv_norm) {
  const int64_t bytes = sdc_code_bytes(dim, bits), c = (int64_t(1) << bits) - 1;
  const unsigned mask = (1u << bits) - 1;
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* lr = levels + r * dim;
    uint8_t* o = codes + r * bytes;
    std::memset(o, 0, size_t(bytes));
    int64_t ss = 0;
    for (int64_t d = 0; d < dim; ++d) {
      const unsigned level = lr[d] & mask;
      const int64_t p = d * bits, byte = p / 8;
      // the level's bits land at stream positions p .. p+bits-1 (MSB first), maybe across two bytes
      const unsigned window = level << (16 - bits - p % 8);
      o[byte] |= uint8_t(window >> 8);
      if (byte + 1 < bytes) o[byte + 1] |= uint8_t(window & 0xFF);
      const int64_t v = 2 * int64_t(level) - c;
      ss += v * v;
    }
    // ||v||^2 = ss / 4^u, so 1/||v|| = 2^u / sqrt(ss); ss >= dim > 0 because 2L - c is odd.
    if (inv_norm) inv_norm[r] = dim ? float(double(int64_t(1) << (bits - 1)) / std::sqrt(double(ss))) : 0.0f;
  }
}

void rbe_unpack_levels(const uint8_t* codes, int64_t n, int64_t dim, int bits, uint8_t* levels) {
  const int64_t bytes = sdc_code_bytes(dim, bits);
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = codes + r * bytes;
    for (int64_t d = 0; d < dim; ++d) {
      const int64_t p = d * bits, byte = p / 8;
      const unsigned window = (unsigned(row[byte]) << 8) | (byte + 1 < bytes ? row[byte + 1] : 0u);
      levels[r * dim + d] = uint8_t((window >> (16 - bits - p % 8)) & ((1u << bits) - 1));
    }
  }
}

}  // namespace embkern::rbe

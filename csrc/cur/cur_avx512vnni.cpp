// AVX-512 VNNI fused score + top-k for many queries (B >= 5): an integer pre-filter with a proven
// error bound, then the exact fp32 chain for the few columns that can still reach a query's bar.
// Few queries (bandwidth bound) use the float path of cur_scan_impl.h.
//
// Why: with fp32 FMA the many-query case is bound by the FMA peak (16 multiply-adds per
// instruction); VPDPBUSD does 64 u8 x s8 multiply-adds per instruction at the same rate. Each
// query is quantized to 8 bits, c = sq p + dc (p in [-127, 127], stored as p + 128 for the unsigned
// operand; the +128 is removed with 128 * sum_j q(j, n)). int8 E is used as it is (q = e); float32
// and bfloat16 E are quantized per column of each panel, e = sn q + de with sn = max|e| / 127. Then
//   |dot(c, e) - sq sn dot(p, q)| <= |c|_2 |de|_2 + sn |q|_2 |dc|_2      (Cauchy-Schwarz, twice)
// and the fp32 chain every path computes differs from dot(c, e) by at most (r + 2) u |c|_2 |e|_2.
// With 1% slack and the roundings of the approximation itself, that bounds each exact score from
// above. A column is rescored with the exact chain (16 (query, column) pairs per vector) only if its
// bound reaches the query's bar, so the results are bitwise those of the float path.
// The float path takes a panel when: a heap is still filling (every column is a candidate), E or
// the scales hold non-finite or extreme magnitudes (the bound assumes no overflow or underflow),
// r > 512 (int32 -> float exactness), or the previous panel needed too many rescores (ties).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cur/cur_avx512_lanes.h"
#include "cur/cur_scan_impl.h"

namespace embkern::cur {
inline namespace EMBKERN_ISA_NS {
namespace {

constexpr int64_t kMaxDepth = 512;                      // |sum p e| < 2^24: exact int32 -> float
constexpr float kMinMag = 0x1p-40f, kMaxMag = 0x1p40f;  // no underflow / overflow in the bound
constexpr int kSkipAfterBadPanel = 8;

inline bool magnitude_ok(float a) { return a == 0.0f || (a >= kMinMag && a <= kMaxMag); }  // NaN: false

template <int ET>
class VnniHook {
 public:
  VnniHook(const TileCtx& t, int64_t nq, int64_t r, int64_t rows_per_tile, int64_t nb, const void* E, int64_t ld,
           const float* scales)
      : t_(t), nq_(nq), r_(r), r4_((r + 3) / 4), rows_per_tile_(rows_per_tile), E_(static_cast<const char*>(E)),
        ld_(ld), scales_(scales) {
    // (int32 gather offsets into C need nq * r < 2^31)
    // (bf16 rescoring reads 32 bits around an element: needs N >= 2, i.e. col_end >= 2)
    // (int32 gather offsets into E's rows need col_end < 2^31)
    // (bf16 rescoring reads 32 bits around an element: needs N >= 2, i.e. col_end >= 2)
    enabled_ = r > 0 && r <= kMaxDepth && rows_per_tile <= V512::kMaxRows && nq * r < (int64_t(1) << 31) &&
               t.col_end < (int64_t(1) << 31) && (ET != kBF16 || t.col_end >= 2);
    if (!enabled_) return;
    sq_.resize(size_t(nq));
    c2_.resize(size_t(nq));
    dc2_.resize(size_t(nq));
    cu_.assign(size_t(nq * r4_), 0);
    for (int64_t q0 = 0; q0 < nq; q0 += rows_per_tile) {
      const int64_t mb = std::min(rows_per_tile, nq - q0);
      for (int64_t b = 0; b < mb; ++b) {
        const float* c = t.C + (q0 + b) * r;
        float cmax = 0.0f;
        for (int64_t j = 0; j < r; ++j) {
          const float a = std::fabs(c[j]);
          if (!(a <= kMaxMag)) {  // also NaN and Inf
            enabled_ = false;
            return;
          }
          cmax = std::max(cmax, a);
        }
        if (!magnitude_ok(cmax)) {
          enabled_ = false;
          return;
        }
        const float inv = cmax > 0.0f ? 127.0f / cmax : 0.0f;
        const float sq = cmax / 127.0f;
        double c2 = 0.0, dc2 = 0.0;  // |c|^2 and |c - sq p|^2 in double: rounding far inside the slack
        for (int64_t g = 0; g < r4_; ++g) {
          uint32_t word = 0;
          for (int i = 0; i < 4; ++i) {
            const int64_t j = 4 * g + i;
            const float p = j < r ? std::min(127.0f, std::max(-127.0f, std::nearbyint(c[j] * inv))) : 0.0f;
            if (j < r) {
              const double d = double(c[j]) - double(sq) * double(p);
              c2 += double(c[j]) * double(c[j]);
              dc2 += d * d;
            }
            word |= uint32_t(uint8_t(int(p) + 128)) << (8 * i);
          }
          cu_[size_t(q0 * r4_ + g * mb + b)] = word;
        }
        sq_[q0 + b] = sq;
        c2_[q0 + b] = float(std::sqrt(c2) * (1.0 + 1e-6));  // rounded up
        dc2_[q0 + b] = float(std::sqrt(dc2) * (1.0 + 1e-6));
      }
    }
    if (nq <= 64) {  // C transposed, 64 queries per row: rescoring selects C values by permutes
      ct64_.assign(size_t(r * 64), 0.0f);
      for (int64_t q = 0; q < nq; ++q)
        for (int64_t j = 0; j < r; ++j) ct64_[size_t(j * 64 + q)] = t.C[q * r + j];
    }
    const int64_t strips = (nb + 31) / 32;
    q8_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, size_t(strips * r4_ * 128))));
    cols_.resize(size_t(strips * 32 * kColArrays));
  }

  bool run_panel(int64_t col0, int64_t ncols, PanelPrefetcher& pf) {
    if (!enabled_) return false;
    if (skip_ > 0) {
      --skip_;
      return false;
    }
    for (int64_t q = 0; q < nq_; ++q)  // while a heap fills every column is a candidate
      if (!t_.qb.full[q]) return false;
    const int64_t nstrips = (ncols + 31) / 32, padded = nstrips * 32;
    float* sc = col(kScale);
    for (int64_t c = 0; c < padded; ++c) {
      sc[c] = ET != kI8 ? 1.0f : c < ncols ? scales_[col0 + c] : 0.0f;
      if (!magnitude_ok(std::fabs(sc[c]))) return false;
    }
    if (!pack(col0, ncols, nstrips)) return false;
    // Integer tiles and bound test; candidates are rescored after the panel (heaps unchanged meanwhile).
    const int64_t per_group = pf.active() ? (pf.quota + r4_ - 1) / r4_ : 0;
    int64_t candidates = 0;
    for (int64_t s = 0; s < nstrips; ++s)
      for (int64_t q0 = 0; q0 < nq_; q0 += rows_per_tile_) {
        const int64_t mb = std::min(rows_per_tile_, nq_ - q0);
        dispatch_rows(mb, [&]<int MB>() {
          if constexpr (MB <= V512::kMaxRows) candidates += tile<MB>(s, q0, col0, per_group, pf);
        });
      }
    rescore(col0);
    // Full heaps admit few columns; more than 1/8 of the pairs means ties or a loose bound.
    if (candidates * 8 > nq_ * ncols) skip_ = kSkipAfterBadPanel;
    return true;
  }

 private:
  enum ColArray { kScale, kScaleN, kInv, kColSum128, kBoundA, kBoundB, kColArrays };
  float* col(ColArray a) { return cols_.data() + size_t(a) * (cols_.size() / kColArrays); }

  // 16 consecutive elements of E's row j from column col as float32 (exactly), zero outside `valid`.
  __m512 load_row(int64_t j, int64_t col, __mmask16 valid) const {
    if constexpr (ET == kF32) {
      return _mm512_maskz_loadu_ps(valid, reinterpret_cast<const float*>(E_) + j * ld_ + col);
    } else if constexpr (ET == kBF16) {
      return bf16x16_to_f32(_mm256_maskz_loadu_epi16(valid, reinterpret_cast<const uint16_t*>(E_) + j * ld_ + col));
    } else {
      return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(valid, reinterpret_cast<const int8_t*>(E_) + j * ld_ + col)));
    }
  }
  // Byte offset in q8_ of panel vector v's (16 columns) group g: strip v / 2, half v % 2.
  int64_t q8_offset(int64_t v, int64_t g) const { return (((v / 2) * r4_ + g) * 2 + v % 2) * 64; }

  static __mmask16 lanes_left(int64_t left) {
    return left >= 16 ? __mmask16(0xffff) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
  }

  // amax[c] = max_j |e(j, col0 + c)| as float32 bits, for c < nvec * 16 (0 past ncols). The
  // integer order of |x| bits is the float order, and Inf / NaN compare above every finite value.
  // bfloat16 is compared in its own 16 bits (32 columns per instruction, no conversion).
  void column_absmax_bits(int64_t col0, int64_t ncols, int64_t nvec, uint32_t* amax) const {
    if constexpr (ET == kBF16) {
      const uint16_t* e = reinterpret_cast<const uint16_t*>(E_) + col0;
      const __m512i mask = _mm512_set1_epi16(0x7fff);
      for (int64_t v2 = 0; v2 < (nvec + 1) / 2; ++v2) {  // 32 columns at a time
        const int64_t left = ncols - v2 * 32;
        const __mmask32 valid = left >= 32 ? ~__mmask32(0) : left <= 0 ? __mmask32(0) : __mmask32((1u << left) - 1);
        __m512i m = _mm512_setzero_si512();
        for (int64_t j = 0; j < r_; ++j)
          m = _mm512_max_epu16(m, _mm512_and_si512(_mm512_maskz_loadu_epi16(valid, e + j * ld_ + v2 * 32), mask));
        // widen: column c's 16 bits become the high half of a float32's bits
        _mm512_storeu_si512(amax + v2 * 32, _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(m)), 16));
        if (v2 * 2 + 1 < nvec)
          _mm512_storeu_si512(amax + v2 * 32 + 16,
                              _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(m, 1)), 16));
      }
    } else {
      const __m512i mask = _mm512_set1_epi32(0x7fffffff);
      for (int64_t v = 0; v < nvec; ++v) {
        const __mmask16 valid = lanes_left(ncols - v * 16);
        const float* e = reinterpret_cast<const float*>(E_) + col0 + v * 16;
        __m512i m = _mm512_setzero_si512();
        for (int64_t j = 0; j < r_; ++j)
          m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(valid, e + j * ld_)), mask));
        _mm512_storeu_si512(amax + v * 16, m);
      }
    }
  }

  // E's columns [col0, col0 + ncols) as VPDPBUSD operands: strip s (32 columns), group g (rows
  // 4g..4g+3), half h: 16 lanes of 4 bytes at q8_[((s * r4 + g) * 2 + h) * 64]; zero past r and
  // ncols. int8 E is used as it is (e = q, sn = 1); float E is quantized per column,
  // e = sn q + d with sn = max|e| / 127. Per column: 128 * sum_j q, sn, and the bound's factors
  //   kBoundA (times |c|_2):           1.01 |d|_2 + (r + 8) 2^-23 |e|_2   (|e|_2 <= sn |q|_2 + |d|_2)
  //   kBoundB (times |c - sq p|_2):    1.01 sn |q|_2
  // from |dot(c, e) - sq sn dot(p, q)| <= |c|_2 |d|_2 + sn |q|_2 |c - sq p|_2 and the fp32 chain's
  // rounding. Returns false (float path) for non-finite or extreme column magnitudes.
  bool pack(int64_t col0, int64_t ncols, int64_t nstrips) {
    const int64_t nvec = nstrips * 2;
    float* sn = col(kScaleN);
    float* inv = col(kInv);
    if constexpr (ET != kI8) {
      uint32_t* amax = reinterpret_cast<uint32_t*>(inv);
      // 8 rows per pass over the running maxima (they live in L1; fewer loads and stores of them)
      column_absmax_bits(col0, ncols, nvec, amax);
      for (int64_t c = 0; c < nvec * 16; ++c) {
        float m;
        std::memcpy(&m, &amax[c], 4);
        if (!magnitude_ok(m)) return false;  // Inf / NaN / extreme
        sn[c] = m / 127.0f;
        inv[c] = m > 0.0f ? 127.0f / m : 0.0f;  // |x inv| <= 127 (1 + u)^2 < 127.5: q in [-127, 127]
      }
    } else {
      std::fill(sn, sn + nvec * 16, 1.0f);
      std::fill(inv, inv + nvec * 16, 1.0f);
    }
    // Per column while packing: sum_j q and sum_j q^2 (int32, exact; int8 E: q^2 summed in float,
    // exact too), sum_j (e - sn q)^2 (float). (0.0f and int 0 have the same bits.)
    int32_t* sum = reinterpret_cast<int32_t*>(col(kColSum128));
    int32_t* q2 = reinterpret_cast<int32_t*>(col(kBoundA));
    float* d2 = col(kBoundB);
    std::fill(sum, sum + nvec * 16, 0);
    std::fill(q2, q2 + nvec * 16, 0);
    std::fill(d2, d2 + nvec * 16, 0.0f);
    const __m512i ones = _mm512_set1_epi8(1);
    // after the two saturating packs a 128-bit lane holds rows 0..3 of its 4 columns, row-major;
    // this byte shuffle makes each dword one column's 4 rows (row 4g in the low byte)
    const __m512i to_columns = _mm512_set4_epi32(0x0f0b0703, 0x0e0a0602, 0x0d090501, 0x0c080400);
    for (int64_t g = 0; g < r4_; ++g)
      for (int64_t v = 0; v < nvec; ++v) {
        const __mmask16 valid = lanes_left(ncols - v * 16);
        const __m512 iv = _mm512_loadu_ps(inv + v * 16), s16 = _mm512_loadu_ps(sn + v * 16);
        __m512i vs = _mm512_loadu_si512(sum + v * 16), vq = _mm512_loadu_si512(q2 + v * 16);
        __m512 vd = _mm512_loadu_ps(d2 + v * 16);
        __m512i q[4];
        for (int i = 0; i < 4; ++i) {
          const int64_t j = 4 * g + i;
          if (j >= r_) {
            q[i] = _mm512_setzero_si512();
            continue;
          }
          const __m512 x = load_row(j, col0 + v * 16, valid);
          if constexpr (ET != kI8) {
            const __m512 qf = _mm512_roundscale_ps(_mm512_mul_ps(x, iv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m512 d = _mm512_fnmadd_ps(s16, qf, x);  // e - sn q, one rounding
            vd = _mm512_fmadd_ps(d, d, vd);
            q[i] = _mm512_cvtps_epi32(qf);
          } else {
            q[i] = _mm512_cvtps_epi32(x);  // int8 E: already integers
            // q = -128 is no s8 |q|: square in float instead (exact below 2^24), kept in vq's bits
            vq = _mm512_castps_si512(_mm512_fmadd_ps(x, x, _mm512_castsi512_ps(vq)));
          }
        }
        const __m512i word = _mm512_shuffle_epi8(
            _mm512_packs_epi16(_mm512_packs_epi32(q[0], q[1]), _mm512_packs_epi32(q[2], q[3])), to_columns);
        vs = _mm512_dpbusd_epi32(vs, ones, word);
        if constexpr (ET != kI8) {  // |q| <= 127 is a valid s8 too: sum |q| |q| = sum q^2
          const __m512i a = _mm512_abs_epi8(word);
          vq = _mm512_dpbusd_epi32(vq, a, a);
        }
        _mm512_storeu_si512(sum + v * 16, vs);
        _mm512_storeu_si512(q2 + v * 16, vq);
        _mm512_storeu_ps(d2 + v * 16, vd);
        _mm512_store_si512(q8_.get() + q8_offset(v, g), word);
      }
    // d's rounding (u relative) and the float sum of r squares (gamma_r) are far inside the 1% slack;
    // sum q^2 < r * 128^2 < 2^24 converts exactly.
    const __m512 chain = _mm512_set1_ps(float(r_ + 8) * 0x1p-23f), slack = _mm512_set1_ps(1.01f);
    for (int64_t v = 0; v < nvec; ++v) {
      const __m512 de = _mm512_sqrt_ps(_mm512_loadu_ps(d2 + v * 16));
      const __m512 qn = _mm512_mul_ps(_mm512_loadu_ps(sn + v * 16),
                                      _mm512_sqrt_ps(ET == kI8 ? _mm512_loadu_ps(reinterpret_cast<const float*>(q2) + v * 16)
                                                                : _mm512_cvtepi32_ps(_mm512_loadu_si512(q2 + v * 16))));
      _mm512_storeu_si512(sum + v * 16, _mm512_slli_epi32(_mm512_loadu_si512(sum + v * 16), 7));  // 128 * sum
      _mm512_storeu_ps(col(kBoundA) + v * 16, _mm512_fmadd_ps(slack, de, _mm512_mul_ps(chain, _mm512_add_ps(qn, de))));
      _mm512_storeu_ps(d2 + v * 16, _mm512_mul_ps(slack, qn));
    }
    return true;
  }

  // Queries [q0, q0 + MB) x strip s (32 columns from global column col0 + 32 s): integer dot
  // products, then each exact score's upper bound against the query's bar (heap bars only rise,
  // so a bar read before the panel's offers is safe). Queues candidates; returns their number.
  template <int MB>
  int64_t tile(int64_t s, int64_t q0, int64_t col0, int64_t per_group, PanelPrefetcher& pf) {
    const uint8_t* e = q8_.get() + q8_offset(2 * s, 0);  // groups 128 bytes apart, halves 64
    const uint32_t* cu = cu_.data() + q0 * r4_;
    // The instruction's own element type: __m512i (64-bit elements) views keep GCC from holding
    // the array in registers.
    __v16si acc[MB][2];
#pragma GCC unroll 16
    for (int b = 0; b < MB; ++b) acc[b][0] = acc[b][1] = __v16si{};
    for (int64_t g = 0; g < r4_; ++g) {
      for (int64_t i = 0; i < per_group; ++i) pf.next();
      const __m512i e0 = _mm512_load_si512(e + g * 128), e1 = _mm512_load_si512(e + g * 128 + 64);
#pragma GCC unroll 16
      for (int b = 0; b < MB; ++b) {
        const __m512i cb = _mm512_set1_epi32(int32_t(cu[g * MB + b]));
        acc[b][0] = __builtin_ia32_vpdpbusd_v16si(acc[b][0], __v16si(cb), __v16si(e0));
        acc[b][1] = __builtin_ia32_vpdpbusd_v16si(acc[b][1], __v16si(cb), __v16si(e1));
      }
    }
    // Sums to memory once (indexing the register array below would make GCC spill it in the loop).
    alignas(64) int32_t sums[MB][2][16];
#pragma GCC unroll 16
    for (int b = 0; b < MB; ++b) {
      _mm512_store_si512(sums[b][0], __m512i(acc[b][0]));
      _mm512_store_si512(sums[b][1], __m512i(acc[b][1]));
    }
    const int64_t c0 = s * 32;
    uint32_t cand[MB];
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const int64_t left = t_.col_end - (col0 + c0 + h * 16);
      const uint32_t valid = lanes_left(left);
      const __m512i cs = _mm512_loadu_si512(reinterpret_cast<const int32_t*>(col(kColSum128)) + c0 + h * 16);
      const __m512 ba = _mm512_loadu_ps(col(kBoundA) + c0 + h * 16);
      const __m512 bb = _mm512_loadu_ps(col(kBoundB) + c0 + h * 16);
      const __m512 sc = _mm512_loadu_ps(col(kScale) + c0 + h * 16);
      const __m512 sn = _mm512_loadu_ps(col(kScaleN) + c0 + h * 16);
      const __m512 asc = _mm512_abs_ps(sc);
#pragma GCC unroll 16
      for (int b = 0; b < MB; ++b) {
        const int64_t q = q0 + b;
        // sq sn dot(p, q): the int32 sum converts exactly; the roundings are covered by the 2^-20 term
        const __m512 approx = _mm512_mul_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums[b][h]), cs)), sn), _mm512_set1_ps(sq_[q]));
        const __m512 bound = _mm512_fmadd_ps(ba, _mm512_set1_ps(c2_[q]), _mm512_mul_ps(bb, _mm512_set1_ps(dc2_[q])));
        const __m512 loose = _mm512_fmadd_ps(_mm512_abs_ps(approx), _mm512_set1_ps(0x1p-20f), bound);
        const __m512 ub = _mm512_fmadd_ps(sc, approx, _mm512_mul_ps(asc, loose));
        // not below the bar, or unordered: a NaN bound must not drop a column
        const uint32_t pass = uint32_t(_mm512_cmp_ps_mask(ub, _mm512_set1_ps(t_.qb.bar[q]), _CMP_NLT_UQ));
        const uint32_t m = (pass & valid) << (16 * h);
        cand[b] = h == 0 ? m : cand[b] | m;
      }
    }
    // Queued in (strip, query, column) order: per query, increasing column, as the heaps need.
    int64_t found = 0;
    for (int b = 0; b < MB; ++b)
      for (uint32_t m = cand[b]; m; m &= m - 1) {
        cand_q_.push_back(int32_t(q0 + b));
        cand_c_.push_back(int32_t(c0 + __builtin_ctz(m)));
        ++found;
      }
    return found;
  }

  // The exact chain for the queued candidates, 16 per vector (lane i: query cand_q_[i], panel
  // column cand_c_[i]), in the float path's order: acc = fma(c_j, e_j, acc) for j = 0..r-1, then
  // (int8) acc * scale. C is gathered; e_j is gathered from E's row j (float32 / bfloat16, still in
  // L2 from packing) or, for int8, four rows at a time from the packed panel. Offered in queue order.
  void rescore(int64_t col0) {
    const int64_t n = int64_t(cand_q_.size());
    const float* sc = col(kScale);
    alignas(64) int32_t qi[16], ei[16], ci[16], sh[16];
    alignas(64) float out[16];
    for (int64_t i0 = 0; i0 < n; i0 += 16) {
      const int m = int(std::min<int64_t>(16, n - i0));
      for (int i = 0; i < 16; ++i) {
        const int64_t k = i0 + std::min(i, m - 1);  // pad with the last candidate
        const int32_t c = cand_c_[k];
        const int64_t gcol = col0 + c;
        qi[i] = cand_q_[k] * int32_t(r_);
        ci[i] = c;
        if constexpr (ET == kI8) {
          ei[i] = int32_t(q8_offset(c / 16, 0) + (c % 16) * 4);  // + g * 128 per group below
        } else if constexpr (ET == kBF16) {
          // 32 bits holding the element and a neighbour inside the same row (never past E's end)
          ei[i] = int32_t(gcol >= 1 ? gcol - 1 : 0);
          sh[i] = gcol >= 1 ? 16 : 0;
        } else {
          ei[i] = int32_t(gcol);
        }
      }
      const __m512i qv = _mm512_load_si512(qi), ev = _mm512_load_si512(ei);
      // C[q_i][j] for the 16 lanes: permutes of the transposed row (nq <= 64), else a gather
      alignas(64) int32_t qn[16];
      for (int i = 0; i < 16; ++i) qn[i] = cand_q_[i0 + std::min(i, m - 1)];
      const __m512i qnum = _mm512_load_si512(qn);
      const __mmask16 upper = _mm512_cmpge_epi32_mask(qnum, _mm512_set1_epi32(32));
      auto c_at = [&](int64_t j) {
        if (ct64_.empty()) return _mm512_i32gather_ps(qv, t_.C + j, 4);
        const float* row = ct64_.data() + j * 64;
        const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(row), qnum, _mm512_loadu_ps(row + 16));
        const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(row + 32), qnum, _mm512_loadu_ps(row + 48));
        return _mm512_mask_blend_ps(upper, lo, hi);
      };
      __m512 a = _mm512_setzero_ps();
      if constexpr (ET == kI8) {
        for (int64_t g = 0; g < r4_; ++g) {
          const __m512i w = _mm512_i32gather_epi32(ev, q8_.get() + g * 128, 1);  // rows 4g..4g+3
          for (int i = 0; i < 4 && 4 * g + i < r_; ++i) {
            const int64_t j = 4 * g + i;
            const __m512 ej = _mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(w, 24 - 8 * i), 24));
            a = _mm512_fmadd_ps(c_at(j), ej, a);
          }
        }
        a = _mm512_mul_ps(a, _mm512_i32gather_ps(_mm512_load_si512(ci), sc, 4));
      } else if constexpr (ET == kBF16) {
        const __m512i shv = _mm512_load_si512(sh);
        const uint16_t* e = reinterpret_cast<const uint16_t*>(E_);
        for (int64_t j = 0; j < r_; ++j) {
          const __m512i w = _mm512_i32gather_epi32(ev, e + j * ld_, 2);
          const __m512 ej = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_srlv_epi32(w, shv), 16));
          a = _mm512_fmadd_ps(c_at(j), ej, a);
        }
      } else {
        const float* e = reinterpret_cast<const float*>(E_);
        for (int64_t j = 0; j < r_; ++j)
          a = _mm512_fmadd_ps(c_at(j), _mm512_i32gather_ps(ev, e + j * ld_, 4), a);
      }
      _mm512_store_ps(out, a);
      for (int i = 0; i < m; ++i)
        if (!std::isnan(out[i])) offer_lanes(t_.heaps, t_.ex, t_.qb, cand_q_[i0 + i], out + i, col0 + cand_c_[i0 + i], 1u);
    }
    cand_q_.clear();
    cand_c_.clear();
  }

  struct FreeBytes {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  const TileCtx& t_;
  int64_t nq_, r_, r4_, rows_per_tile_;
  const char* E_;
  int64_t ld_;
  const float* scales_;
  bool enabled_ = false;
  int skip_ = 0;
  std::vector<float> sq_, c2_, dc2_;  // per query: scale, |c|_2, |c - sq p|_2 (rounded up)
  std::vector<float> ct64_;           // nq <= 64: C transposed, [j][64]
  std::vector<uint32_t> cu_;          // per query tile: [group][query] 4 x (p + 128)
  std::unique_ptr<uint8_t[], FreeBytes> q8_;
  std::vector<float> cols_;              // kColArrays arrays of per-column values
  std::vector<int32_t> cand_q_, cand_c_;  // queued candidates: query, column within the panel
};

}  // namespace
}  // namespace EMBKERN_ISA_NS

void score_topk_scan_avx512vnni(EMBKERN_CUR_SCAN_ARGS) {
  score_topk_scan_vec<V512, VnniHook>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
}

}  // namespace embkern::cur

// embedding family kernels: multiplexed hashed embedding bags (DESIGN 3.1) over raw pointers.
// Framework-free. Each ISA variant lives in its own translation unit (embedding_ref.cpp,
// embedding_avx2.cpp, embedding_avx512.cpp) and instantiates embedding_impl.h with its lane traits.
//
// Hash version 1: row(v, g) = row_base[g] + hash_to_range(mix64(mix64(uint64(v)) ^ key[g]), row_size[g]).
// Layout (TorchRec jagged, feature-major): bag (f, b) holds values[offsets[f*B + b] .. offsets[f*B + b + 1]);
// feature f owns the global probes g in [probe_offsets[f], probe_offsets[f + 1]).
//
// Floating point: every path accumulates each output element in the same order with the same
// operations (plain adds; fused multiply-add wherever a scale is applied; one division for mean), so
// scalar, AVX2, AVX-512 and CUDA give bitwise identical results.
#pragma once
#include <cstdint>

#include "common/hash.h"

namespace embkern::emb {

enum class WType : int { F32 = 0, BF16 = 1, F16 = 2, F64 = 3 };
enum Pooling : int { kPoolSum = 0, kPoolMean = 1, kPoolNone = 2 };
enum Combine : int { kCombineConcat = 0, kCombineSum = 1 };
// What the backward does with each unique row's summed gradient.
enum ApplyMode : int { kWriteRow = 0, kSgd = 1, kRowwiseAdagrad = 2 };

// Storage types of 16-bit weights (bit patterns).
struct bf16_t { uint16_t x; };
struct f16_t { uint16_t x; };

// The probe layout and the jagged input, shared by forward and backward.
struct MuxLayout {
  const void* values = nullptr;  // int32 or int64 [N]
  bool values_i32 = false;
  int64_t n = 0;                 // N
  const int64_t* offsets = nullptr;  // [F*B + 1]
  int64_t num_features = 0;      // F
  int64_t batch = 0;             // B
  const int64_t* probe_offsets = nullptr;  // [F + 1]
  const int64_t* row_base = nullptr;       // [G]
  const int64_t* row_size = nullptr;       // [G]
  const uint64_t* keys = nullptr;          // [G]
  int64_t num_probes = 0;        // G
};

inline uint64_t value_bits(const MuxLayout& L, int64_t i) {
  // int32 ids are sign-extended, so int32 and int64 inputs of the same value hash alike.
  return L.values_i32 ? uint64_t(int64_t(static_cast<const int32_t*>(L.values)[i]))
                      : uint64_t(static_cast<const int64_t*>(L.values)[i]);
}

// Second half of the hash: premixed = mix64(uint64(v)).
inline int64_t probe_row(uint64_t premixed, uint64_t key, int64_t base, int64_t size) {
  return base + int64_t(hash_to_range(mix64(premixed ^ key), uint64_t(size)));
}

// ---- forward -----------------------------------------------------------------------------------
// Software prefetch distance of the CPU forward, in rows. Prefetched into L2 (hint T1): at P1's size
// T1 with 64-128 rows measured ~20% faster than T0 with 16 (T0 holds a line fill buffer per line until
// the line reaches L1, which caps the random row reads in flight); see docs/embedding.md.
constexpr int64_t kPrefetchRows = 128;
// Pooled modes (sum / mean): out is [B, out_cols] in the accumulation type (float, or double for F64
// weights), out_cols = G*D (concat) or D (sum combine). Computes batch rows [b_begin, b_end).
// psw: per-sample weights [N] in the accumulation type, or null.
struct ForwardArgs {
  MuxLayout L;
  const void* weight = nullptr;  // [M, D]
  WType wtype = WType::F32;
  int64_t dim = 0;               // D
  int pooling = kPoolSum;
  int combine = kCombineConcat;
  const void* psw = nullptr;
  void* out = nullptr;
  int64_t out_cols = 0;
  int64_t prefetch = kPrefetchRows;  // software prefetch distance in rows (0: off)
  // Optional (pooled sum without per-sample weights): the backward's sort keys, written while the
  // rows are hashed, so that the backward of a training step need not hash again. Pair (i, g) of
  // feature f goes to pair_keys[pair_base[f] + (i - offsets[f * B]) * P_f + g - probe_offsets[f]]
  // as (row << key_shift) | (b << probe_bits) | g: the backward's packed direct code.
  uint64_t* pair_keys = nullptr;
  const int64_t* pair_base = nullptr;  // [F]
  int key_shift = 0;
  int probe_bits = 0;
};
#define EMBKERN_EMB_FWD_ARGS const ForwardArgs &a, int64_t b_begin, int64_t b_end
void forward_pooled_scalar(EMBKERN_EMB_FWD_ARGS);
void forward_pooled_avx2(EMBKERN_EMB_FWD_ARGS);
void forward_pooled_avx512(EMBKERN_EMB_FWD_ARGS);

// pooling none: out[i, p*D .. (p+1)*D) = weight[row(values[i], probe_offsets[f] + p)] for the values
// [i_begin, i_end) of feature f (out_cols = max_f P_f * D; columns of probes the feature lacks are
// left untouched: the caller zero-fills them).
#define EMBKERN_EMB_NONE_ARGS const ForwardArgs &a, int64_t feature, int64_t i_begin, int64_t i_end
void forward_none_scalar(EMBKERN_EMB_NONE_ARGS);
void forward_none_avx2(EMBKERN_EMB_NONE_ARGS);
void forward_none_avx512(EMBKERN_EMB_NONE_ARGS);

// ---- backward ----------------------------------------------------------------------------------
// The op sorts (row, code) pairs, code = (i << probe_bits) | g for value i and probe g (probe_bits =
// bit width of G - 1: decoding is a shift, and codes ascend in (i, g) order), by row (stable, so
// codes ascend inside a row) and finds the unique rows. Each unique row u owns sorted pairs
// [seg_start[u], seg_start[u + 1]); its gradient is sum over them, in that order, of
//   scale[i] * grad[slot_row[i] * grad_stride + g_col[g] .. + D)   (one fma per element)
// and is then written out (kWriteRow: out + u*D, or out + row*D when out_by_row) or applied in place.
// Direct codes (CPU, slot_row null: every scale is 1): code = (grad row << probe_bits) | g instead,
// and the term is grad[(code >> probe_bits) * grad_stride + g_col[g] ..) added (fma by 1 rounds
// alike). The pairs sit in (i, g) order before the stable sort either way, so the order of the
// terms of a row is the same.
struct BackwardArgs {
  const uint64_t* rows = nullptr;   // sorted rows [P]
  const uint64_t* codes = nullptr;  // codes in the same order [P]
  // [U + 1]; or null (CPU, in-place modes): the kernel is then called with a range of pair
  // indices and finds the row boundaries itself (see num_pairs).
  const int64_t* seg_start = nullptr;
  int64_t num_pairs = 0;            // P, when seg_start is null
  int probe_bits = 0;               // decodes the codes
  // Packed pairs: rows[p] >> row_shift is the row and codes[p] & code_mask the code (rows and codes
  // may then be the same array); row_shift = 0 and code_mask = ~0 for separate arrays.
  int row_shift = 0;
  uint64_t code_mask = ~uint64_t(0);
  int64_t dim = 0;                  // D
  const void* grad = nullptr;       // accumulation type
  int64_t grad_stride = 0;
  const int64_t* g_col = nullptr;   // [G] column of probe g's slot in a grad row
  // [N] grad row of value i, or null for direct codes: code >> probe_bits is then the grad row and
  // every scale is 1 (sum pooling without per-sample weights, or pooling none; CPU only).
  const int64_t* slot_row = nullptr;
  const void* scale = nullptr;      // [N] accumulation type
  int mode = kWriteRow;
  void* out = nullptr;              // kWriteRow: accumulation type
  bool out_by_row = false;
  void* weight = nullptr;           // kSgd / kRowwiseAdagrad: [M, D] of wtype, updated in place
  WType wtype = WType::F32;
  double lr = 0.0, eps = 0.0;
  void* momentum = nullptr;         // kRowwiseAdagrad: [M], accumulation type
};
#define EMBKERN_EMB_BWD_ARGS const BackwardArgs &a, int64_t u_begin, int64_t u_end
void backward_segments_scalar(EMBKERN_EMB_BWD_ARGS);
void backward_segments_avx2(EMBKERN_EMB_BWD_ARGS);
void backward_segments_avx512(EMBKERN_EMB_BWD_ARGS);

// grad of per_sample_weights (sum pooling): gpsw[i] = sum over the probes g of value i's feature of
// dot(grad[slot], weight[row(i, g)]), each dot summed in d order. Scalar (a small, rare path).
void psw_grad_scalar(const ForwardArgs& a, const void* grad, int64_t grad_stride, int64_t feature, int64_t i_begin,
                     int64_t i_end, void* gpsw);

}  // namespace embkern::emb

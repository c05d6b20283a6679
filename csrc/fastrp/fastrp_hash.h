// FastRP's very sparse random projection R, generated on the fly from a hash (host and device).
// Framework-free; the CPU kernels, the CUDA kernels and the debug op all call these functions, so
// every backend produces the same entries bit for bit.
//
//   seed_state  = mix64(uint64(seed))            node rows (R)
//               = mix64(~uint64(seed))           feature rows (the projection of node features)
//   row_state   = mix64(seed_state ^ uint64(key))
//   h(key, c)   = mix64(row_state + c * 0x9E3779B97F4A7C15)   (output c of a splitmix64 stream)
//   R[key, c]   = +sqrt(s) if h < t,  -sqrt(s) if ~h < t,  else 0,   t = floor(2^64 / (2 s))
// so each sign has probability 1/(2s) (s >= 1 keeps the two ranges disjoint).
#pragma once
#include <cstdint>

#include "common/hash.h"

namespace embkern::fastrp {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

EMBKERN_HOST_DEVICE uint64_t rp_seed_state(int64_t seed, bool feature_rows) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return mix64(feature_rows ? ~s : s);
}

EMBKERN_HOST_DEVICE uint64_t rp_row_state(uint64_t seed_state, int64_t key) {
  return mix64(seed_state ^ static_cast<uint64_t>(key));
}

// The sign of R[., column] as a 2-bit code: 1 = +, 2 = -, 0 = zero (the CPU's coded L R stores these).
EMBKERN_HOST_DEVICE uint32_t rp_sign_code(uint64_t row_state, int64_t column, uint64_t threshold) {
  const uint64_t h = mix64(row_state + static_cast<uint64_t>(column) * kGolden);
  return h < threshold ? 1u : (~h < threshold ? 2u : 0u);
}

EMBKERN_HOST_DEVICE float rp_entry(uint64_t row_state, int64_t column, uint64_t threshold, float sqrt_s) {
  const uint32_t code = rp_sign_code(row_state, column, threshold);
  return code == 1u ? sqrt_s : (code == 2u ? -sqrt_s : 0.0f);
}

}  // namespace embkern::fastrp

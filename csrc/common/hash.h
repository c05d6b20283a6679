// Hashes shared by host and device code (embedding rows, FastRP projections). Framework-free.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define EMBKERN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define EMBKERN_HOST_DEVICE inline
#endif

namespace embkern {

// splitmix64 finalizer (Steele, Lea, Flood 2014): a bijection on 64-bit words with full avalanche.
// Arithmetic is mod 2^64; the constants are part of hash version 1 (DESIGN 3.1) and must not change.
EMBKERN_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Maps a uniform 64-bit hash to [0, n) without division and without modulo bias beyond 2^-64 per
// value: floor(h * n / 2^64) (Lemire's multiply-shift).
EMBKERN_HOST_DEVICE uint64_t hash_to_range(uint64_t h, uint64_t n) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(h, n);
#else
  return uint64_t((static_cast<unsigned __int128>(h) * n) >> 64);
#endif
}

}  // namespace embkern

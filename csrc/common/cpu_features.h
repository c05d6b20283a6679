// CPU feature detection and the active ISA. Framework-free: kernels and the op layer share it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace embkern {

// Instruction-set levels, ordered: a level implies every lower one.
enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;       // with FMA and POPCNT (all three required for the AVX2 level)
  bool avx512 = false;     // F + BW + VL + DQ, with the OS saving zmm state
  bool vpopcntdq = false;  // AVX512_VPOPCNTDQ
  bool vnni = false;       // AVX512_VNNI
  bool bf16 = false;       // AVX512_BF16
  bool vbmi = false;       // AVX512_VBMI
};

// What the processor and OS support (detected once).
const CpuFeatures& cpu_features_detected();

// What kernels may use now: the detected features, capped by the active ISA and by the
// extensions disabled through set_active_isa (tests use that to reach every code path).
CpuFeatures cpu_features_active();
Isa active_isa();
Isa best_isa();  // highest level the machine supports

// Throws std::invalid_argument (naming the value) if `isa` is unknown or unsupported here, or if
// an entry of `disable` is not one of vpopcntdq, vnni, bf16, vbmi.
void set_active_isa(const std::string& isa, const std::vector<std::string>& disable);

const char* isa_name(Isa isa);
std::vector<std::string> feature_names(const CpuFeatures& f);
std::vector<std::string> compiled_isa_names();

}  // namespace embkern

#include "common/cpu_features.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define EMBKERN_X86 1
#endif

namespace embkern {
namespace {

#ifdef EMBKERN_X86
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef EMBKERN_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), popcnt = c & (1u << 23);
  if (!osxsave) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;
  const bool zmm_state = (xcr0 & 0xE6) == 0xE6;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool f512 = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  f.avx2 = ymm_state && avx2 && fma && popcnt;
  f.avx512 = f.avx2 && zmm_state && f512 && dq && bw && vl;
  if (f.avx512) {
    f.vbmi = c & (1u << 1);
    f.vnni = c & (1u << 11);
    f.vpopcntdq = c & (1u << 14);
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.bf16 = a1 & (1u << 5);
  }
#endif
  return f;
}

struct State {
  std::atomic<int> isa{0};
  std::atomic<bool> no_vpopcntdq{false}, no_vnni{false}, no_bf16{false}, no_vbmi{false};
};

State& state();

Isa parse_isa(const std::string& s) {
  if (s == "scalar") return Isa::Scalar;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  throw std::invalid_argument("isa: expected one of 'scalar', 'avx2', 'avx512', got '" + s + "'");
}

State& init_state(State& st) {
  st.isa = int(best_isa());
  // EMBKERN_ISA forces a lower path for the whole process; a level the machine lacks is capped
  // with a warning rather than crashing an import.
  if (const char* env = std::getenv("EMBKERN_ISA"); env && *env) {
    try {
      const Isa want = parse_isa(env);
      if (int(want) > int(best_isa()))
        std::fprintf(stderr, "embkern: EMBKERN_ISA=%s is not supported by this CPU; using %s\n", env,
                     isa_name(best_isa()));
      else
        st.isa = int(want);
    } catch (const std::invalid_argument&) {
      std::fprintf(stderr, "embkern: ignoring EMBKERN_ISA=%s (expected scalar, avx2 or avx512)\n", env);
    }
  }
  return st;
}

State& state() {
  static State st;
  static std::once_flag once;
  std::call_once(once, [] { init_state(st); });
  return st;
}

}  // namespace

const CpuFeatures& cpu_features_detected() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_isa() {
  const auto& f = cpu_features_detected();
  return f.avx512 ? Isa::Avx512 : f.avx2 ? Isa::Avx2 : Isa::Scalar;
}

Isa active_isa() { return Isa(state().isa.load(std::memory_order_relaxed)); }

CpuFeatures cpu_features_active() {
  CpuFeatures f = cpu_features_detected();
  const State& st = state();
  const Isa isa = active_isa();
  if (int(isa) < int(Isa::Avx512)) f.avx512 = f.vpopcntdq = f.vnni = f.bf16 = f.vbmi = false;
  if (int(isa) < int(Isa::Avx2)) f.avx2 = false;
  if (st.no_vpopcntdq) f.vpopcntdq = false;
  if (st.no_vnni) f.vnni = false;
  if (st.no_bf16) f.bf16 = false;
  if (st.no_vbmi) f.vbmi = false;
  return f;
}

void set_active_isa(const std::string& isa, const std::vector<std::string>& disable) {
  const Isa want = parse_isa(isa);
  if (int(want) > int(best_isa()))
    throw std::invalid_argument("isa: '" + isa + "' is not supported by this CPU (best is '" +
                                isa_name(best_isa()) + "')");
  bool no_pop = false, no_vnni = false, no_bf16 = false, no_vbmi = false;
  for (const auto& d : disable) {
    if (d == "vpopcntdq") no_pop = true;
    else if (d == "vnni") no_vnni = true;
    else if (d == "bf16") no_bf16 = true;
    else if (d == "vbmi") no_vbmi = true;
    else
      throw std::invalid_argument("disable: expected entries among 'vpopcntdq', 'vnni', 'bf16', 'vbmi', got '" +
                                  d + "'");
  }
  State& st = state();
  st.no_vpopcntdq = no_pop;
  st.no_vnni = no_vnni;
  st.no_bf16 = no_bf16;
  st.no_vbmi = no_vbmi;
  st.isa = int(want);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

std::vector<std::string> feature_names(const CpuFeatures& f) {
  std::vector<std::string> out;
  if (f.avx2) out.push_back("avx2");
  if (f.avx512) out.push_back("avx512");
  if (f.vpopcntdq) out.push_back("vpopcntdq");
  if (f.vnni) out.push_back("vnni");
  if (f.bf16) out.push_back("bf16");
  if (f.vbmi) out.push_back("vbmi");
  return out;
}

std::vector<std::string> compiled_isa_names() {
#ifdef EMBKERN_X86
  return {"scalar", "avx2", "avx512"};
#else
  return {"scalar"};
#endif
}

}  // namespace embkern

// Header-only code (templates, inline helpers) is compiled once per ISA translation unit, each
// with its own -m flags. The linker keeps one copy of each inline symbol, so an AVX-512-compiled
// copy could end up running on the scalar path. CMake defines EMBKERN_ISA_NS per translation unit
// (isa_scalar, isa_avx2, isa_avx512...) and shared headers open it as an inline namespace, so every
// ISA gets symbols of its own.
#pragma once
#ifndef EMBKERN_ISA_NS
#define EMBKERN_ISA_NS isa_generic
#endif

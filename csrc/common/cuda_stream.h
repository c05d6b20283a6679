// cudaStream_t without the CUDA headers, so kernel interfaces (<family>_cuda.h) can be included by
// op files in CPU-only builds. Identical to the runtime's own typedef, so both may be visible.
#pragma once
struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

// CPU-emulation stand-in for the CUDA runtime header (tests/cuda_emu): just what the kernels use.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
typedef struct CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline const char* cudaGetErrorString(cudaError_t) { return "emu"; }
inline const char* cudaGetErrorName(cudaError_t) { return "emu"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
template <typename F>
cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }
struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};
struct int4 { int x, y, z, w; };
struct float4 { float x, y, z, w; };
struct uint4 { unsigned int x, y, z, w; };
struct float2 { float x, y; };
inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }
inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
inline float2 make_float2(float a, float b) { return float2{a, b}; }

// Set-up shared by the kernel's SIMD files: x86 intrinsics where the target has them
// (MIGSAFE_X86), and GCC 12's reports on its own AVX-512 intrinsics (_mm512_undefined_*) as
// (maybe-)uninitialized silenced for the including file.
#pragma once
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MIGSAFE_X86 1
#endif

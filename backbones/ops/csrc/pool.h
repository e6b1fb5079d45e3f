// The block pool of scan_cpu.cpp (large float32 buffers reused across calls; see its comment and
// ops/bigbuf.py), exported to the other kernel sources of the one library.
#pragma once
#include <ATen/ATen.h>

// Uninitialised contiguous float32 CPU tensor; blocks of >= 4 MiB come from (and return to) the pool.
at::Tensor longstream_empty_big(at::IntArrayRef sizes);

#ifndef C_APUS_MALLOC_COUNTER_H
#define C_APUS_MALLOC_COUNTER_H

#include <stdbool.h>

// Counts heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign) made by the threads
// that opted in, for allocation-budget tests: the counter interposes glibc's allocator entry points in the test
// executable and forwards every call to glibc's own implementation (`__libc_malloc` and friends), so behaviour is
// unchanged; only a thread-local flag check and, on opted-in threads, one relaxed atomic increment are added.

/// Starts or stops counting the allocations of the calling thread.
void apus_malloc_counter_set_counting(bool enabled);

/// Allocations counted since the last reset, over all opted-in threads.
long apus_malloc_counter_allocations(void);

/// Sets the count back to zero.
void apus_malloc_counter_reset(void);

#endif

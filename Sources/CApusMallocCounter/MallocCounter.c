#include "CApusMallocCounter.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>

// glibc's implementations behind the public names; calling them directly avoids dlsym(RTLD_NEXT), which itself
// allocates and so cannot be used from inside malloc.
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

// Initial-exec TLS of the executable: reading it never allocates (safe inside malloc).
static _Thread_local bool counting = false;
static atomic_long allocations = 0;

static inline void count_one(void) {
    if (counting) {
        atomic_fetch_add_explicit(&allocations, 1, memory_order_relaxed);
    }
}

void apus_malloc_counter_set_counting(bool enabled) { counting = enabled; }

long apus_malloc_counter_allocations(void) { return atomic_load_explicit(&allocations, memory_order_relaxed); }

void apus_malloc_counter_reset(void) { atomic_store_explicit(&allocations, 0, memory_order_relaxed); }

void *malloc(size_t size) {
    count_one();
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    count_one();
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    count_one();
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    count_one();
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    count_one();
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) {
        return EINVAL;
    }
    count_one();
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL && size != 0) {
        return ENOMEM;
    }
    *result = pointer;
    return 0;
}

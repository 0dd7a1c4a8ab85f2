/* membw.c - see membw.h. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "membw.h"

#include <numa.h>
#include <sched.h>

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static float sum_512(const float *p, size_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#endif

/* Portable: 8 independent sums the compiler can keep in vector registers. */
static float sum_c(const float *p, size_t n) {
    float a[8] = {0};
    for (size_t i = 0; i + 8 <= n; i += 8)
        for (size_t j = 0; j < 8; j++) a[j] += p[i + j];
    return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

double moe_read_bandwidth(size_t bytes, uint32_t threads, int reps) {
    const size_t chunk = 64 * sizeof(float);
    const size_t n = bytes / chunk * chunk / sizeof(float);
    if (n == 0 || threads == 0) return 0.0;
    float *buf = aligned_alloc(64, n * sizeof(float));
    if (!buf) return 0.0;
    bool wide = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx512f");
#endif
    /* Each thread that OpenMP grants touches and reads its own share (whole
     * chunks); the bytes are counted from the threads that ran. */
#pragma omp parallel num_threads((int)threads)
    {
        const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
        memset(buf + (size_t)omp_get_thread_num() * per, 0, per * sizeof(float));
    }
    double best = 0.0;
    volatile float sink = 0.0f;
    for (int r = 0; r < reps; r++) {
        float total = 0.0f;
        size_t read = 0;
        double t0 = moe_now();
#pragma omp parallel num_threads((int)threads) reduction(+ : total, read)
        {
            const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
            const float *p = buf + (size_t)omp_get_thread_num() * per;
            read += per;
#if defined(__x86_64__) && defined(__GNUC__)
            total += wide ? sum_512(p, per) : sum_c(p, per);
#else
            total += sum_c(p, per);
#endif
        }
        double dt = moe_now() - t0;
        sink = sink + total;
        double gbps = (double)(read * sizeof(float)) / dt / 1e9;
        if (gbps > best) best = gbps;
    }
    (void)sink;
    free(buf);
    return best;
}

int moe_read_bandwidth_nodes(size_t bytes, uint32_t threads, int reps, uint32_t cpu_node, uint32_t mem_node,
                             double *out) {
    const size_t n = bytes / (64 * sizeof(float)) * 64;
    if (n == 0 || threads == 0 || reps <= 0 || numa_available() < 0 || cpu_node > (uint32_t)numa_max_node() ||
        mem_node > (uint32_t)numa_max_node())
        return 0;
    float *buf = numa_alloc_onnode(n * sizeof(float), (int)mem_node);
    cpu_set_t *masks = calloc(threads, sizeof *masks);
    if (!buf || !masks) {
        if (buf) numa_free(buf, n * sizeof(float));
        free(masks);
        return 0;
    }
    bool wide = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    wide = __builtin_cpu_supports("avx512f");
#endif
    /* Separate regions: the pool's threads keep their binding between them,
     * and the reads cannot be folded into the touching stores. */
    int done = 0, ran = 0;
    bool bound_all = true;
    struct bitmask *warm = numa_allocate_cpumask(); /* fill libnuma's node cache from one thread */
    if (warm) numa_node_to_cpus((int)cpu_node, warm), numa_free_cpumask(warm);
#pragma omp parallel num_threads((int)threads) reduction(&& : bound_all)
    {
        const int id = omp_get_thread_num();
        bound_all = sched_getaffinity(0, sizeof masks[id], &masks[id]) == 0 && numa_run_on_node((int)cpu_node) == 0;
        const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
        memset(buf + (size_t)id * per, 0, per * sizeof(float));
#pragma omp master
        ran = omp_get_num_threads();
    }
    for (int r = 0; r < reps && bound_all; r++) {
        float total = 0.0f;
        size_t read = 0;
        double t0 = moe_now();
#pragma omp parallel num_threads(ran) reduction(+ : total, read)
        {
            const size_t per = n / 64 / (size_t)omp_get_num_threads() * 64;
            const float *p = buf + (size_t)omp_get_thread_num() * per;
#if defined(__x86_64__) && defined(__GNUC__)
            total += wide ? sum_512(p, per) : sum_c(p, per);
#else
            total += sum_c(p, per);
#endif
            read += per;
        }
        const double dt = moe_now() - t0;
        volatile float sink = total;
        (void)sink;
        out[r] = (double)(read * sizeof(float)) / dt / 1e9;
        done = r + 1;
    }
#pragma omp parallel num_threads(ran)
    sched_setaffinity(0, sizeof masks[omp_get_thread_num()], &masks[omp_get_thread_num()]);
    numa_free(buf, n * sizeof(float));
    free(masks);
    return bound_all ? done : 0;
}

/* exec.c - runs a layer's CPU expert jobs on a team of OpenMP threads.
 * Until the oneDNN engine lands, every job runs the reference kernel; the
 * decomposition (one job per expert, dynamic scheduling) stays. */
#include "expert.h"

#include <omp.h>

void moe_cpu_run(const moe_cpu_job *jobs, uint32_t n_jobs, uint32_t n_threads, float *scratch,
                 uint32_t max_inter) {
    if (n_jobs == 0) return;
    if (n_threads > n_jobs) n_threads = n_jobs;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel num_threads((int)n_threads)
    {
        float *mine = scratch + (size_t)omp_get_thread_num() * max_inter;
#pragma omp for schedule(dynamic, 1)
        for (int64_t j = 0; j < (int64_t)n_jobs; j++)
            moe_ref_expert(&jobs[j].w, jobs[j].m, jobs[j].x, jobs[j].y, mine);
    }
}

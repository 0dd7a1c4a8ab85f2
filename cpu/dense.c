/* dense.c - dense matrix products on the engine's kernels (see dense.h). */
#include "dense.h"

#include <omp.h>
#include <stdlib.h>

#include "kern.h"

/* Rows [r0, r1) of every token with kernel k over activations a. */
static void run(const moe_kernel *k, const moe_acts *a, const void *w, const float *wscale, uint32_t cols,
                uint32_t r0, uint32_t r1, float *y, uint32_t rows) {
    if (r0 < r1) k->gemv(w, wscale, cols, r0, r1, a, y + r0, rows);
}

moe_status moe_cpu_dense(uint32_t n_threads, bool portable, const void *w, moe_dtype dt, const float *wscale,
                         uint32_t rows, uint32_t cols, uint32_t n, const float *x, float *y) {
    if (!n || !rows) return MOE_OK;
    if (!w || !x || !y || !cols || (dt == MOE_DTYPE_I8 && !wscale) || (unsigned)dt >= MOE_DTYPE_COUNT_)
        return moe_fail(MOE_ERR_INVALID_ARG, "dense: %ux%u %s weights for %u tokens: bad argument", rows, cols,
                        moe_dtype_name(dt), n);
    if (!moe_dtype_row_bytes(dt, cols))
        return moe_fail(MOE_ERR_INVALID_ARG, "dense: %ux%u %s weights: a row of %u is not a whole number of "
                        "%zu-element blocks", rows, cols, moe_dtype_name(dt), cols, moe_dtype_block(dt));
    const moe_kernel gk = moe_kernel_select(dt, portable);
    moe_kernel ak = portable || n <= MOE_DENSE_GEMV_MAX_M ? (moe_kernel){0} : moe_kernel_amx(dt);
    if (ak.gemv && cols % (dt == MOE_DTYPE_I8 ? 64u : 32u)) ak.gemv = NULL;
    if (ak.gemv && dt == MOE_DTYPE_I8 && cols > 65536) ak.gemv = NULL;
    const uint32_t amx_rows = ak.gemv ? rows / 16 * 16 : 0;
    void *gbuf = NULL, *abuf = NULL;
    float *gscale = NULL, *ascale = NULL;
    if (amx_rows < rows && gk.act != MOE_ACT_F32) {
        gbuf = malloc(moe_acts_bytes(gk.act, n, cols));
        gscale = malloc((size_t)n * sizeof *gscale);
    }
    if (amx_rows) {
        abuf = malloc(moe_acts_bytes(ak.act, n, cols));
        ascale = malloc((size_t)n * sizeof *ascale);
    }
    if ((amx_rows < rows && gk.act != MOE_ACT_F32 && (!gbuf || !gscale)) || (amx_rows && (!abuf || !ascale))) {
        free(gbuf), free(gscale), free(abuf), free(ascale);
        return moe_fail(MOE_ERR_OUT_OF_MEMORY, "dense: out of memory for %u tokens x %u", n, cols);
    }
    const moe_acts ga = amx_rows < rows ? moe_acts_prepare(gk.act, n, cols, x, cols, gbuf, gscale) : (moe_acts){0};
    const moe_acts aa = amx_rows ? moe_acts_prepare(ak.act, n, cols, x, cols, abuf, ascale) : (moe_acts){0};
    /* Each thread takes a slice of rows, a multiple of 16 for AMX, sized by
     * the threads OpenMP actually granted. */
#pragma omp parallel num_threads((int)(n_threads ? n_threads : 1))
    {
        const uint32_t t = (uint32_t)omp_get_thread_num(), nt = (uint32_t)omp_get_num_threads();
        const uint32_t per = ((rows + nt - 1) / nt + 15) / 16 * 16;
        const uint32_t r0 = t * per < rows ? t * per : rows, r1 = r0 + per < rows ? r0 + per : rows;
        const uint32_t a1 = r1 < amx_rows ? r1 : amx_rows;
        if (r0 < a1) {
            moe_amx_begin();
            run(&ak, &aa, w, wscale, cols, r0, a1, y, rows);
            moe_amx_end();
        }
        run(&gk, &ga, w, wscale, cols, a1 > r0 ? a1 : r0, r1, y, rows);
    }
    free(gbuf), free(gscale), free(abuf), free(ascale);
    return MOE_OK;
}

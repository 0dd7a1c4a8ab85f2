/* worker.c - moe_layer_forward_submit / moe_layer_wait (runtime.h): a
 * thread of the runtime runs one submitted forward at a time, so the
 * host's thread can do its own work meanwhile. While a forward is in
 * flight every other call on the runtime is refused (rt_busy). */
#include <stdio.h>

#include "runtime.h"

static void *worker_main(void *arg) {
    moe_runtime_t *rt = arg;
    rt_worker *w = &rt->worker;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->ready && !w->stop) pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) break;
        w->ready = false;
        pthread_mutex_unlock(&w->mu);
        const moe_status st = rt_forward(rt, w->job.layer, w->job.n, w->job.hidden, w->job.top_k, w->job.ids,
                                         w->job.weights, w->job.out);
        pthread_mutex_lock(&w->mu);
        w->status = st;
        /* The message lives in this thread's last error: the waiter gets a copy. */
        snprintf(w->error, sizeof w->error, "%s", st != MOE_OK ? moe_last_error() : "");
        w->done = true;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static moe_status start(moe_runtime_t *rt) {
    rt_worker *w = &rt->worker;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->stop = w->ready = w->done = false;
    if (pthread_create(&w->thread, NULL, worker_main, rt) != 0) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        return moe_fail(MOE_ERR_INTERNAL, "moe_layer_forward_submit: could not start the runtime's thread");
    }
    w->started = true;
    return MOE_OK;
}

moe_status moe_layer_forward_submit(moe_runtime_t *rt, uint32_t layer, uint32_t n_tokens, const float *hidden,
                                    uint32_t top_k, const int32_t *topk_ids, const float *topk_weights, float *out) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_forward_submit: not a runtime handle");
    moe_status st = rt_busy(rt, "moe_layer_forward_submit");
    if (st == MOE_OK) st = rt_check_forward(rt, layer, n_tokens, hidden, top_k, topk_ids, topk_weights, out);
    if (st == MOE_OK && !rt->worker.started) st = start(rt);
    if (st != MOE_OK) return st;
    rt_worker *w = &rt->worker;
    pthread_mutex_lock(&w->mu);
    w->job.layer = layer, w->job.n = n_tokens, w->job.top_k = top_k;
    w->job.hidden = hidden, w->job.ids = topk_ids, w->job.weights = topk_weights, w->job.out = out;
    w->done = false;
    w->ready = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->inflight = true;
    return MOE_OK;
}

moe_status moe_layer_wait(moe_runtime_t *rt) {
    if (!rt_valid(rt)) return moe_fail(MOE_ERR_INVALID_ARG, "moe_layer_wait: not a runtime handle");
    rt_worker *w = &rt->worker;
    if (!w->inflight) return moe_fail(MOE_ERR_STATE, "moe_layer_wait: no forward was submitted");
    pthread_mutex_lock(&w->mu);
    while (!w->done) pthread_cond_wait(&w->cv, &w->mu);
    const moe_status st = w->status;
    char msg[sizeof w->error];
    memcpy(msg, w->error, sizeof msg);
    pthread_mutex_unlock(&w->mu);
    w->inflight = false;
    return st == MOE_OK ? MOE_OK : moe_fail(st, "%s", msg);
}

void rt_stop_worker(moe_runtime_t *rt) {
    rt_worker *w = &rt->worker;
    if (!w->started) return;
    if (w->inflight) (void)moe_layer_wait(rt);
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    w->started = false;
}

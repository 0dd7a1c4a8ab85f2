/* log.c - one-line log messages through the host's callback or stderr. */
#include "common.h"

#include <stdio.h>

static const char *level_name(moe_log_level l) {
    switch (l) {
    case MOE_LOG_ERROR: return "error";
    case MOE_LOG_WARN: return "warning";
    case MOE_LOG_INFO: return "info";
    case MOE_LOG_DEBUG: return "debug";
    }
    return "log";
}

void moe_log(const moe_logger *lg, moe_log_level level, const char *fmt, ...) {
    /* No logger: warnings and errors only, to stderr. */
    if (lg ? level > lg->level : level > MOE_LOG_WARN) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (lg && lg->fn)
        lg->fn(level, msg, lg->user);
    else
        fprintf(stderr, "moerun %s: %s\n", level_name(level), msg);
}

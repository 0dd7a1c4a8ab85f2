/* error.c - status strings, the per-thread last-error message, versions. */
#include "common.h"

#include <stdio.h>

#ifndef MOE_BUILD_INFO
#define MOE_BUILD_INFO "unknown build"
#endif

#define MOE_STR2(x) #x
#define MOE_STR(x) MOE_STR2(x)

static _Thread_local char last_error[1024];

moe_status moe_fail(moe_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

moe_status moe_fail_at(moe_status s, const char *file, unsigned long long line, const char *fmt, ...) {
    char msg[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return moe_fail(s, "%s:%llu: %s", file, line, msg);
}

const char *moe_last_error(void) { return last_error; }

const char *moe_status_str(moe_status s) {
    switch (s) {
    case MOE_OK: return "success";
    case MOE_ERR_INVALID_ARG: return "invalid argument";
    case MOE_ERR_OUT_OF_MEMORY: return "out of host memory";
    case MOE_ERR_IO: return "input/output error";
    case MOE_ERR_PARSE: return "malformed input";
    case MOE_ERR_UNSUPPORTED: return "not supported by this build or machine";
    case MOE_ERR_STATE: return "not allowed in the current state";
    case MOE_ERR_DEVICE: return "GPU error";
    case MOE_ERR_NO_DEVICE: return "no usable GPU";
    case MOE_ERR_INTERNAL: return "internal error (a bug in moerun)";
    case MOE_STATUS_COUNT_: break;
    }
    return "unknown status";
}

const char *moe_version(void) {
    return MOE_STR(MOE_VERSION_MAJOR) "." MOE_STR(MOE_VERSION_MINOR) "." MOE_STR(MOE_VERSION_PATCH);
}

unsigned moe_api_version(void) { return MOE_API_VERSION; }

const char *moe_build_info(void) { return "moerun " MOE_STR(MOE_VERSION_MAJOR) "." MOE_STR(
    MOE_VERSION_MINOR) "." MOE_STR(MOE_VERSION_PATCH) " (" MOE_BUILD_INFO ")"; }

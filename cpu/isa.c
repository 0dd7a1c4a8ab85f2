/* isa.c - see isa.h. */
#include "isa.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const names[] = {"c", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "native"};

const char *moe_isa_name(moe_isa_level l) { return (unsigned)l <= MOE_ISA_NATIVE ? names[l] : "invalid"; }

bool moe_isa_parse(const char *s, moe_isa_level *out) {
    for (int i = 0; i <= MOE_ISA_NATIVE; i++)
        if (strcmp(s, names[i]) == 0) return *out = (moe_isa_level)i, true;
    return false;
}

moe_isa moe_isa_capped(const moe_isa *cpu, moe_isa_level cap) {
    moe_isa r = *cpu;
    r.cap = cap;
    r.avx2 &= cap >= MOE_ISA_AVX2;
    r.avx_vnni &= cap >= MOE_ISA_AVX2;
    r.avx512 &= cap >= MOE_ISA_AVX512;
    r.avx512_vnni &= r.avx512 && cap >= MOE_ISA_AVX512_VNNI;
    r.avx512_bf16 &= r.avx512 && cap >= MOE_ISA_AVX512_BF16;
    r.avx512_vbmi &= r.avx512_bf16 && r.avx512_vnni;
    r.amx &= r.avx512_bf16 && cap >= MOE_ISA_AMX;
    return r;
}

static moe_isa detected;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void detect(void) {
    moe_isa cpu = {0};
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
#define HAS(f) (__builtin_cpu_supports(f) != 0)
    cpu.avx2 = HAS("avx2") && HAS("fma") && HAS("f16c");
    cpu.avx_vnni = cpu.avx2 && HAS("avxvnni");
    cpu.avx512 = cpu.avx2 && HAS("avx512f") && HAS("avx512bw") && HAS("avx512vl") && HAS("avx512dq");
    cpu.avx512_vnni = cpu.avx512 && HAS("avx512vnni");
    cpu.avx512_bf16 = cpu.avx512 && HAS("avx512bf16");
    cpu.avx512_vbmi = cpu.avx512 && HAS("avx512vbmi");
    cpu.amx = cpu.avx512_bf16 && HAS("amx-tile") && HAS("amx-bf16") && HAS("amx-int8");
#undef HAS
#endif
    moe_isa_level cap = MOE_ISA_NATIVE;
    const char *env = getenv("MOE_CPU_ISA");
    if (env && *env && !moe_isa_parse(env, &cap)) {
        fprintf(stderr, "moerun: MOE_CPU_ISA=\"%s\" is not one of c, avx2, avx512, avx512_vnni, avx512_bf16, amx, "
                        "native; ignored\n", env);
        cap = MOE_ISA_NATIVE;
    }
    detected = moe_isa_capped(&cpu, cap);
}

const moe_isa *moe_cpu_isa(void) {
    pthread_once(&once, detect);
    return &detected;
}

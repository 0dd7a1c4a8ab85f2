/* isa.h - which instruction sets the CPU engine may use: the CPU's
 * features, capped by the MOE_CPU_ISA environment variable (as oneDNN's
 * ONEDNN_MAX_CPU_ISA caps oneDNN), so every kernel path runs, is tested
 * and is benchmarked on any machine whose CPU has a superset of it.
 *
 * Levels, in order: c < avx2 < avx512 < avx512_vnni < avx512_bf16 < amx.
 *   avx2         AVX2, FMA, F16C (and AVX-VNNI where the CPU has it)
 *   avx512       AVX-512 F/BW/VL/DQ
 *   avx512_vnni  ... and AVX512-VNNI
 *   avx512_bf16  ... and AVX512-BF16
 *   amx          ... and AMX tiles
 * A level allows what it names and everything below it, and only what the
 * CPU has: MOE_CPU_ISA never enables an instruction the CPU lacks (a SIGILL
 * is a defect). Unset or "native": the CPU's own features. An unknown
 * value is ignored with a warning on stderr, once. */
#ifndef MOE_CPU_ISA_H
#define MOE_CPU_ISA_H

#include <stdbool.h>

typedef enum moe_isa_level {
    MOE_ISA_C = 0,
    MOE_ISA_AVX2,
    MOE_ISA_AVX512,
    MOE_ISA_AVX512_VNNI,
    MOE_ISA_AVX512_BF16,
    MOE_ISA_AMX,
    MOE_ISA_NATIVE /* no cap */
} moe_isa_level;

typedef struct moe_isa {
    bool avx2;        /* AVX2 + FMA + F16C */
    bool avx_vnni;    /* AVX-VNNI (256-bit VNNI, Intel client cores) */
    bool avx512;      /* F, BW, VL, DQ (and FMA) */
    bool avx512_vnni;
    bool avx512_bf16;
    bool avx512_vbmi; /* VBMI, taken only with BF16 (the cap's avx512_bf16 level): byte permutes */
    bool amx;         /* AMX-BF16 and AMX-INT8 (the OS's permission is asked separately) */
    moe_isa_level cap;
} moe_isa;

/* The features the engine may use (computed once; thread-safe). */
const moe_isa *moe_cpu_isa(void);

/* Parses a MOE_CPU_ISA value: true and *out on success. */
bool moe_isa_parse(const char *s, moe_isa_level *out);

/* "c", "avx2", "avx512", "avx512_vnni", "avx512_bf16", "amx", "native". */
const char *moe_isa_name(moe_isa_level l);

/* The features a CPU with `cpu` may use under cap `cap` (for tests). */
moe_isa moe_isa_capped(const moe_isa *cpu, moe_isa_level cap);

#endif

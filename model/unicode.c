/* unicode.c - UTF-8, character classes and NFC (see unicode.h). */
#include "unicode.h"

#include <stdbool.h>

size_t moe_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    const uint8_t c = s[0];
    *cp = MOE_UC_INVALID;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) len = 2, v = c & 0x1fu, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef) len = 3, v = c & 0x0fu, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4) len = 4, v = c & 0x07u, min = 0x10000;
    else return 1;
    if (len > n) return 1;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0) != 0x80) return 1;
        v = v << 6 | (s[k] & 0x3fu);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 1;
    *cp = v;
    return len;
}

size_t moe_utf8_encode(uint32_t cp, uint8_t *out) {
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xc0 | cp >> 6);
        out[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xe0 | cp >> 12);
        out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        out[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    out[0] = (uint8_t)(0xf0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    out[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

static uint32_t range_value(const moe_uc_range *t, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (cp < t[mid].lo) hi = mid;
        else if (cp > t[mid].hi) lo = mid + 1;
        else return t[mid].value;
    }
    return 0;
}

int moe_uc_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return MOE_UC_LETTER;
        if (cp >= '0' && cp <= '9') return MOE_UC_NUMBER;
        return cp == ' ' || (cp >= 0x09 && cp <= 0x0d) ? MOE_UC_SPACE : MOE_UC_OTHER;
    }
    return (int)range_value(moe_uc_classes, moe_uc_classes_len, cp);
}

int moe_uc_is_word(uint32_t cp) {
    if (cp < 0x80) return moe_uc_class(cp) == MOE_UC_LETTER || moe_uc_class(cp) == MOE_UC_NUMBER || cp == '_';
    return (int)range_value(moe_uc_word, moe_uc_word_len, cp);
}

/* ---- NFC ---- */

/* Invalid bytes travel through the code point buffer as this plus the byte. */
#define RAW_BYTE MOE_UC_INVALID

enum { S_BASE = 0xac00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11a7, L_COUNT = 19, V_COUNT = 21,
       T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT };

static uint32_t ccc(uint32_t cp) {
    return cp < 0x300 || cp >= RAW_BYTE ? 0 : range_value(moe_uc_ccc, moe_uc_ccc_len, cp);
}

/* Index of the triple whose (a, b) is (a, b), or -1; b = UINT32_MAX matches on a alone. */
static long find_triple(const moe_uc_triple *t, size_t n, uint32_t a, uint32_t b) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        const bool less = t[mid].a < a || (t[mid].a == a && b != UINT32_MAX && t[mid].b < b);
        const bool more = t[mid].a > a || (t[mid].a == a && b != UINT32_MAX && t[mid].b > b);
        if (less) lo = mid + 1;
        else if (more) hi = mid;
        else return (long)mid;
    }
    return -1;
}

static size_t decompose(uint32_t cp, uint32_t *out) {
    if (cp >= S_BASE && cp < S_BASE + S_COUNT) {
        const uint32_t s = cp - S_BASE, t = s % T_COUNT;
        out[0] = L_BASE + s / N_COUNT;
        out[1] = V_BASE + s % N_COUNT / T_COUNT;
        if (!t) return 2;
        out[2] = T_BASE + t;
        return 3;
    }
    const long k = cp < 0xc0 || cp >= RAW_BYTE ? -1 : find_triple(moe_uc_decomp, moe_uc_decomp_len, cp, UINT32_MAX);
    if (k < 0) {
        out[0] = cp;
        return 1;
    }
    size_t n = decompose(moe_uc_decomp[k].b, out);
    if (moe_uc_decomp[k].c) n += decompose(moe_uc_decomp[k].c, out + n);
    return n;
}

/* Stable sort of each run of non-starters by combining class. */
static void canonical_order(uint32_t *cp, size_t n) {
    for (size_t i = 1; i < n; i++) {
        const uint32_t x = cp[i], cx = ccc(x);
        if (!cx) continue;
        size_t j = i;
        while (j > 0 && ccc(cp[j - 1]) > cx) {
            cp[j] = cp[j - 1];
            j--;
        }
        cp[j] = x;
    }
}

/* The primary composite of a and b, or 0. */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
        return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 && b > T_BASE && b < T_BASE + T_COUNT)
        return a + (b - T_BASE);
    const long k = find_triple(moe_uc_comp, moe_uc_comp_len, a, b);
    return k < 0 ? 0 : moe_uc_comp[k].c;
}

static size_t compose(uint32_t *cp, size_t n) {
    size_t m = 0;
    long starter = -1;
    uint32_t last_cc = 0;
    for (size_t i = 0; i < n; i++) {
        const uint32_t c = cp[i], cc = ccc(c);
        if (starter >= 0) {
            const bool adjacent = (size_t)starter == m - 1;
            const uint32_t p = adjacent || last_cc < cc ? compose_pair(cp[starter], c) : 0;
            if (p) {
                cp[starter] = p;
                continue;
            }
        }
        if (!cc) starter = (long)m;
        cp[m++] = c;
        last_cc = cc;
    }
    return m;
}

size_t moe_nfc(const uint8_t *s, size_t n, uint8_t *out, uint32_t *scratch) {
    bool ascii = true;
    for (size_t i = 0; i < n && ascii; i++) ascii = s[i] < 0x80;
    if (ascii) {
        for (size_t i = 0; i < n; i++) out[i] = s[i];
        return n;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        const size_t len = moe_utf8_decode(s + i, n - i, &c);
        if (c == MOE_UC_INVALID) c = RAW_BYTE + s[i];
        m += decompose(c, scratch + m);
        i += len;
    }
    canonical_order(scratch, m);
    m = compose(scratch, m);
    size_t o = 0;
    for (size_t k = 0; k < m; k++) {
        if (scratch[k] >= RAW_BYTE) out[o++] = (uint8_t)(scratch[k] - RAW_BYTE);
        else o += moe_utf8_encode(scratch[k], out + o);
    }
    return o;
}

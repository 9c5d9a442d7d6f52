/* Software AMX: execute AMX tile instructions on CPUs that do not have them.
 *
 * Modules compiled for sapphirerapids contain real AMX instructions. On a CPU without AMX they
 * raise #UD (SIGILL); on an AMX CPU whose process never asked Linux for the tile-data state,
 * the kernel's XFD trap turns every tile-DATA instruction into SIGILL as well. This library
 * installs a SIGILL handler that decodes the instruction at the faulting RIP, executes it on a
 * per-thread software tile state, and resumes after it.
 *
 * Covered (Intel SDM vol. 2, AMX): LDTILECFG, STTILECFG, TILERELEASE, TILEZERO, TILELOADD,
 * TILELOADDT1, TILESTORED, TDPBF16PS and the int8 TDPBSSD/TDPBSUD/TDPBUSD/TDPBUUD.
 *
 * - Anything else (or an AMX opcode with a field the SDM makes #UD: VEX.L/W, tmm8+, a missing
 *   SIB, ...) is reported on stderr with its bytes and address and passed on to the previous
 *   SIGILL handler, as if the emulator were not there.
 * - A #UD or #GP that the SDM defines for a well-formed instruction (tiles used before
 *   LDTILECFG, shapes that do not fit, an invalid configuration) is reported on stderr with the
 *   instruction, its operands, the address and the reason, and then the process dies: #UD goes
 *   to the previous SIGILL handler (faulthandler prints its traceback) and then SIGILL's default
 *   action; #GP raises SIGSEGV, as the hardware's #GP would. If a handler returns, the process
 *   still dies (_exit 132 for #UD, 139 for #GP).
 *
 * Semantics kept: TILECFG.start_row (loads and stores restart there, every tile instruction
 * clears it), the zeroing of row bytes past colsb and of rows past rows, and TDPBF16PS's
 * numerics bit for bit: the SDM's two partial sums per output (even and odd bf16 pairs, each an
 * FP32 FMA from 0), then their sum, then the add to the destination; DAZ on every input,
 * flush-to-zero of results that are tiny after rounding, round to nearest even, MXCSR neither
 * read nor written. It is done in integer arithmetic, so no FP state matters. NaNs: an FMA
 * returns the first NaN of (A element, B element, partial sum), an add its first NaN operand
 * (even before odd, destination before their sum), quieted; invalid operations give the
 * default NaN 0xFFC00000. The SDM is silent on NaNs; this is what tdpbf16ps does on a Xeon,
 * against which all of the above was checked bit for bit.
 *
 * On an AMX CPU without the permission, LDTILECFG, STTILECFG and TILERELEASE run natively (the
 * tile configuration is not XFD-armed; only the tile data is) and never reach us. The handler
 * then reads the interrupted context's tile configuration from the XSAVE image in the signal
 * frame (component 17); inside the handler the registers hold the kernel's init state, so
 * STTILECFG would not do. When that configuration differs from the software one, the software
 * one is replaced and the software tiles are zeroed, as LDTILECFG or TILERELEASE did natively.
 * Limit: a native LDTILECFG that reloads the same configuration cannot be seen, so tiles keep
 * their data where real hardware would have zeroed them (code that loads or zeroes its tiles
 * after LDTILECFG, as ours does, is not affected).
 *
 * Other limits: a memory operand that faults inside the handler kills the process with SIGSEGV
 * at an address inside this library; address-size 0x67 and FS/GS overrides are honoured,
 * other segment prefixes are ignored as in 64-bit mode.
 *
 * Per-thread state lives in an mmap'd block found through an initial-exec TLS pointer (no
 * allocation happens inside glibc's TLS machinery in the handler); it is unmapped by a
 * pthread key destructor at thread exit where the key can be set without allocating.
 * Build: cc -O2 -shared -fPIC (runtime/amx_emulator.py does it, into a per-user cache).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <ucontext.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ instructions */

enum { OP_LDTILECFG, OP_STTILECFG, OP_TILERELEASE, OP_TILEZERO, OP_TILELOADD, OP_TILELOADDT1,
       OP_TILESTORED, OP_TDPBF16PS, OP_TDPBSSD, OP_TDPBSUD, OP_TDPBUSD, OP_TDPBUUD, OP_COUNT };

static const char *const MNEMONIC[OP_COUNT] = {
    "ldtilecfg", "sttilecfg", "tilerelease", "tilezero", "tileloadd", "tileloaddt1",
    "tilestored", "tdpbf16ps", "tdpbssd", "tdpbsud", "tdpbusd", "tdpbuud"};

static const char *const GPR[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"};

/* One decoded instruction (the Python side mirrors this layout). Tile fields are -1 when the
 * instruction has no such operand; base/index are GPR numbers in encoding order or -1. */
struct dlrm_amx_insn {
    int32_t op, length;
    int32_t treg, trm, tvvvv; /* tiles from ModRM.reg, ModRM.rm, VEX.vvvv */
    int32_t has_mem, base, index, scale, rip_relative, addr32, seg;
    int64_t disp;
};

/* Decoder results below zero: not an instruction this library executes. */
enum { DEC_TRUNCATED = -1, DEC_NOT_VEX3 = -2, DEC_NOT_AMX = -3, DEC_RESERVED = -4,
       DEC_BAD_TILE = -5, DEC_NEEDS_SIB = -6 };

static const char *decode_reason(int rc) {
    switch (rc) {
    case DEC_TRUNCATED: return "truncated instruction";
    case DEC_NOT_VEX3: return "not a VEX3-encoded instruction";
    case DEC_NOT_AMX: return "not an AMX opcode";
    case DEC_RESERVED: return "AMX opcode with a reserved field (VEX.L/W/vvvv, ModRM)";
    case DEC_BAD_TILE: return "tile register above tmm7";
    case DEC_NEEDS_SIB: return "tile load/store without a SIB byte";
    }
    return "ok";
}

EXPORT int dlrm_amx_emu_decode(const uint8_t *p, int len, struct dlrm_amx_insn *d) {
    memset(d, 0, sizeof *d);
    d->op = d->treg = d->trm = d->tvvvv = d->base = d->index = -1;
    int i = 0;
    for (;; i++) { /* the only legacy prefixes a VEX instruction may carry */
        if (i >= len) return DEC_TRUNCATED;
        uint8_t b = p[i];
        if (b == 0x67) d->addr32 = 1;
        else if (b == 0x64 || b == 0x65) d->seg = b;
        else if (b != 0x26 && b != 0x2e && b != 0x36 && b != 0x3e) break;
        if (i >= 14) return DEC_NOT_VEX3;
    }
    if (p[i] != 0xc4) return DEC_NOT_VEX3; /* 2-byte VEX (C5) cannot encode map 0F38 */
    if (i + 5 > len) return DEC_TRUNCATED;
    uint8_t b1 = p[i + 1], b2 = p[i + 2], opc = p[i + 3], modrm = p[i + 4];
    if ((b1 & 0x1f) != 2 || (opc != 0x49 && opc != 0x4b && opc != 0x5c && opc != 0x5e))
        return DEC_NOT_AMX;
    int R = !(b1 & 0x80), X = !(b1 & 0x40), B = !(b1 & 0x20); /* stored inverted */
    int W = b2 >> 7, vvvv = (~b2 >> 3) & 15, L = (b2 >> 2) & 1, pp = b2 & 3;
    int mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
    i += 5;
    if (W || L) return DEC_RESERVED;
    switch (opc) {
    case 0x49:
        if (pp == 0 && mod == 3 && reg == 0 && rm == 0) d->op = OP_TILERELEASE;
        else if (pp == 0 && mod != 3 && reg == 0) d->op = OP_LDTILECFG;
        else if (pp == 1 && mod != 3 && reg == 0) d->op = OP_STTILECFG;
        else if (pp == 3 && mod == 3 && rm == 0) d->op = OP_TILEZERO, d->treg = reg;
        else return DEC_RESERVED;
        break;
    case 0x4b: {
        static const int8_t ops[4] = {-1, OP_TILELOADDT1, OP_TILESTORED, OP_TILELOADD};
        if (ops[pp] < 0 || mod == 3) return DEC_RESERVED;
        if (rm != 4) return DEC_NEEDS_SIB;
        d->op = ops[pp], d->treg = reg;
        break;
    }
    case 0x5c:
    case 0x5e: {
        static const int8_t ops5e[4] = {OP_TDPBUUD, OP_TDPBUSD, OP_TDPBSUD, OP_TDPBSSD};
        if (mod != 3 || (opc == 0x5c && pp != 2)) return DEC_RESERVED;
        if (R || B || vvvv > 7) return DEC_BAD_TILE;
        d->op = opc == 0x5c ? OP_TDPBF16PS : ops5e[pp];
        d->treg = reg, d->trm = rm, d->tvvvv = vvvv;
        d->length = i;
        return 0;
    }
    }
    if (vvvv != 0) return DEC_RESERVED; /* VEX.vvvv must be 1111b */
    if (R) return d->treg >= 0 ? DEC_BAD_TILE : DEC_RESERVED;
    if (mod == 3) { /* TILERELEASE, TILEZERO: VEX.X/B have no register to extend */
        if (X || B) return DEC_RESERVED;
        d->length = i;
        return 0;
    }
    d->has_mem = 1; /* ModRM/SIB/displacement, 64-bit addressing */
    int disp_bytes = mod == 1 ? 1 : mod == 2 ? 4 : 0;
    if (rm == 4) {
        if (i >= len) return DEC_TRUNCATED;
        uint8_t sib = p[i++];
        int idx = ((sib >> 3) & 7) | X << 3, base = (sib & 7) | B << 3;
        d->scale = sib >> 6;
        d->index = idx == 4 ? -1 : idx; /* index 100b without VEX.X: no index (stride 0) */
        if ((sib & 7) == 5 && mod == 0) disp_bytes = 4; /* no base: disp32 */
        else d->base = base;
    } else if (rm == 5 && mod == 0) {
        d->rip_relative = 1, disp_bytes = 4;
    } else {
        d->base = rm | B << 3;
    }
    if (i + disp_bytes > len) return DEC_TRUNCATED;
    if (disp_bytes == 1) d->disp = (int8_t)p[i];
    if (disp_bytes == 4) { int32_t v; memcpy(&v, p + i, 4); d->disp = v; }
    d->length = i + disp_bytes;
    return 0;
}

/* ------------------------------------------------------------------ text (async-signal-safe) */

struct text { char *buf; int len, cap; };

static void put(struct text *t, const char *s) {
    while (*s && t->len < t->cap - 1) t->buf[t->len++] = *s++;
    t->buf[t->len] = 0;
}

static void put_hex(struct text *t, uint64_t v, int digits) {
    char tmp[17];
    int n = 0;
    do { tmp[n++] = "0123456789abcdef"[v & 15]; v >>= 4; } while ((v || n < digits) && n < 16);
    char out[18];
    for (int k = 0; k < n; k++) out[k] = tmp[n - 1 - k];
    out[n] = 0;
    put(t, out);
}

static void put_tile(struct text *t, int n) {
    char s[5] = "tmm0";
    s[3] = (char)('0' + n);
    put(t, s);
}

static void put_gpr(struct text *t, int r, int addr32) { /* eax.., r8d.. under 0x67 */
    if (addr32 && r < 8) put(t, "e"), put(t, GPR[r] + 1);
    else put(t, GPR[r]), put(t, addr32 ? "d" : "");
}

static void put_mem(struct text *t, const struct dlrm_amx_insn *d) {
    if (d->seg) put(t, d->seg == 0x64 ? "fs:" : "gs:");
    put(t, "[");
    int any = 0;
    if (d->rip_relative) put(t, d->addr32 ? "eip" : "rip"), any = 1;
    if (d->base >= 0) put_gpr(t, d->base, d->addr32), any = 1;
    if (d->index >= 0) {
        if (any) put(t, "+");
        put_gpr(t, d->index, d->addr32), put(t, "*"), put_hex(t, 1u << d->scale, 1), any = 1;
    }
    if (d->disp || !any) {
        if (any) put(t, d->disp < 0 ? "-" : "+");
        put(t, "0x"), put_hex(t, d->disp < 0 && any ? -(uint64_t)d->disp : (uint64_t)d->disp, 1);
    }
    put(t, "]");
}

/* Intel syntax, e.g. "tileloadd tmm1, [r12+r13*1+0x40]". */
EXPORT int dlrm_amx_emu_format(const struct dlrm_amx_insn *d, char *buf, int cap) {
    struct text t = {buf, 0, cap};
    if (cap <= 0) return 0;
    buf[0] = 0;
    if (d->op < 0 || d->op >= OP_COUNT) return 0;
    put(&t, MNEMONIC[d->op]);
    if (d->op == OP_TILERELEASE) return t.len;
    put(&t, " ");
    if (d->op == OP_TILESTORED) put_mem(&t, d), put(&t, ", ");
    if (d->treg >= 0) put_tile(&t, d->treg);
    if (d->has_mem && d->op != OP_TILESTORED) put(&t, d->treg >= 0 ? ", " : ""), put_mem(&t, d);
    if (d->trm >= 0) put(&t, ", "), put_tile(&t, d->trm), put(&t, ", "), put_tile(&t, d->tvvvv);
    return t.len;
}

static void write_all(const char *s, int n) {
    while (n > 0) {
        ssize_t w = write(2, s, (size_t)n);
        if (w <= 0 && errno != EINTR) return;
        if (w > 0) s += w, n -= (int)w;
    }
}

/* ------------------------------------------------------------------ tile state */

struct tilecfg { /* the 64-byte LDTILECFG operand */
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

struct amx_state {
    uint8_t tile[8][16][64] __attribute__((aligned(64)));
    struct tilecfg cfg; /* all zero when not configured (palette 0) */
};

static __thread struct amx_state *tls_state __attribute__((tls_model("initial-exec")));
static pthread_key_t state_key;
static int state_key_settable; /* glibc keeps the first 32 keys' values in the thread itself */
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void free_state(void *p) {
    tls_state = NULL;
    munmap(p, sizeof(struct amx_state));
}

static void make_key(void) {
    if (pthread_key_create(&state_key, free_state) == 0) state_key_settable = state_key < 32;
}

static struct amx_state *thread_state(void) {
    struct amx_state *s = tls_state;
    if (s) return s;
    pthread_once(&key_once, make_key); /* done by install() before any signal can come */
    void *p = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    tls_state = s = p; /* zero-filled: not configured */
    if (state_key_settable) pthread_setspecific(state_key, s);
    return s;
}

static uint64_t counters[OP_COUNT];

/* ------------------------------------------------------------------ TDPBF16PS arithmetic */

/* An exact value (-1)^s * m * 2^e; m == 0 is a zero of sign s. */
struct xval { uint64_t m; int e, s; };

static int msb(uint64_t x) { return 63 - __builtin_clzll(x); }

static struct xval from_f32(uint32_t f) { /* finite, after DAZ */
    struct xval r = {0, 0, (int)(f >> 31)};
    uint32_t e = (f >> 23) & 0xff;
    if (e) r.m = (f & 0x7fffff) | 0x800000, r.e = (int)e - 150;
    return r;
}

/* Exact sum, or one with a sticky bit far below fp32's rounding point. */
static struct xval xadd(struct xval a, struct xval b) {
    if (!a.m) { if (!b.m) b.s &= a.s; return b; } /* -0 + -0 = -0; otherwise +0 (RNE) */
    if (!b.m) return a;
    int ka = 61 - msb(a.m), kb = 61 - msb(b.m);
    a.m <<= ka, a.e -= ka, b.m <<= kb, b.e -= kb;
    if (a.e < b.e || (a.e == b.e && a.m < b.m)) { struct xval t = a; a = b; b = t; }
    int d = a.e - b.e;
    if (d > 62) b.m = 1;
    else if (d) b.m = (b.m >> d) | ((b.m & ((1ull << d) - 1)) != 0);
    a.m = a.s == b.s ? a.m + b.m : a.m - b.m;
    if (!a.m) a.s = 0;
    return a;
}

/* Round to fp32: nearest even; tininess is detected after rounding, and tiny results flush to a
 * zero of their sign (FTZ); overflow gives infinity. */
static uint32_t round_f32(struct xval x) {
    uint32_t sign = (uint32_t)x.s << 31;
    if (!x.m) return sign;
    int k = msb(x.m), E = k + x.e, sh = k - 23;
    uint64_t mant = x.m;
    if (sh > 0) {
        uint64_t rem = x.m & ((1ull << sh) - 1), half = 1ull << (sh - 1);
        mant = x.m >> sh;
        if (rem > half || (rem == half && (mant & 1))) mant++;
        if (mant >> 24) mant >>= 1, E++;
    } else {
        mant <<= -sh;
    }
    if (E > 127) return sign | 0x7f800000u;
    if (E < -126) return sign;
    return sign | (uint32_t)(E + 127) << 23 | (uint32_t)(mant & 0x7fffff);
}

#define DEFAULT_NAN 0xffc00000u
static int is_nan(uint32_t f) { return (f & 0x7fffffff) > 0x7f800000; }
static int is_inf(uint32_t f) { return (f & 0x7fffffff) == 0x7f800000; }
static uint32_t daz(uint32_t f) { return (f & 0x7f800000) ? f : f & 0x80000000u; }

/* c + fp32(a) * fp32(b) with one rounding (a bf16 product is exact). */
static uint32_t fma_bf16(uint32_t c, uint16_t a16, uint16_t b16) {
    uint32_t a = daz((uint32_t)a16 << 16), b = daz((uint32_t)b16 << 16);
    c = daz(c);
    if (is_nan(a)) return a | 0x400000;
    if (is_nan(b)) return b | 0x400000;
    if (is_nan(c)) return c | 0x400000;
    uint32_t ps = (a ^ b) & 0x80000000u;
    if (is_inf(a) || is_inf(b)) {
        if (!(a & 0x7fffffff) || !(b & 0x7fffffff)) return DEFAULT_NAN; /* inf * 0 */
        if (is_inf(c) && (c & 0x80000000u) != ps) return DEFAULT_NAN;   /* inf - inf */
        return ps | 0x7f800000u;
    }
    if (is_inf(c)) return c;
    struct xval x = from_f32(a), y = from_f32(b), p = {x.m * y.m, x.e + y.e, x.s ^ y.s};
    return round_f32(xadd(from_f32(c), p));
}

static uint32_t add_f32(uint32_t x, uint32_t y) {
    x = daz(x), y = daz(y);
    if (is_nan(x)) return x | 0x400000;
    if (is_nan(y)) return y | 0x400000;
    if (is_inf(x)) return is_inf(y) && x != y ? DEFAULT_NAN : x;
    if (is_inf(y)) return y;
    return round_f32(xadd(from_f32(x), from_f32(y)));
}

/* The SDM's TDPBF16PS for one output element: k pairs of A's row m and B's column n. */
static uint32_t dot_bf16(uint32_t c, const uint16_t *arow, const uint8_t *b, int bstride, int n,
                         int k) {
    uint32_t even = 0, odd = 0;
    for (int kk = 0; kk < k; kk++) {
        const uint16_t *bp = (const uint16_t *)(b + (size_t)kk * bstride) + 2 * n;
        even = fma_bf16(even, arow[2 * kk], bp[0]);
        odd = fma_bf16(odd, arow[2 * kk + 1], bp[1]);
    }
    return add_f32(c, add_f32(even, odd));
}

/* Numerics entry point: C[rows][ncols] (fp32 bits) += A[rows][2*kpairs] . B[kpairs][2*ncols]
 * (bf16 pairs, VNNI-2), with no tile limits. */
EXPORT void dlrm_amx_emu_tdpbf16ps(uint32_t *c, const uint16_t *a, const uint16_t *b, int rows,
                                   int kpairs, int ncols) {
    for (int m = 0; m < rows; m++) {
        uint32_t *crow = c + (size_t)m * ncols;
        for (int n = 0; n < ncols; n++)
            crow[n] = dot_bf16(crow[n], a + (size_t)m * 2 * kpairs, (const uint8_t *)b,
                               4 * ncols, n, kpairs);
    }
}

static uint32_t dot_int8(uint32_t c, uint32_t x, uint32_t y, int sx, int sy) {
    for (int j = 0; j < 4; j++) {
        int32_t xb = sx ? (int8_t)(x >> 8 * j) : (int32_t)(uint8_t)(x >> 8 * j);
        int32_t yb = sy ? (int8_t)(y >> 8 * j) : (int32_t)(uint8_t)(y >> 8 * j);
        c += (uint32_t)(xb * yb); /* dword wrap-around, as the SDM's DPBD */
    }
    return c;
}

/* ------------------------------------------------------------------ execution */

enum { FAULT_NONE, FAULT_UD, FAULT_GP };

struct cpu { /* what an instruction sees of the interrupted thread */
    const uint64_t *regs; /* 16 GPRs in encoding order, then RIP */
    uint8_t *frame_cfg;   /* the XSAVE image's tile configuration, or NULL */
    uint64_t *frame_bv;   /* its XSTATE_BV */
};

static uint64_t seg_base(int seg) {
    unsigned long v = 0;
    if (seg) syscall(SYS_arch_prctl, seg == 0x64 ? 0x1003 /* ARCH_GET_FS */ : 0x1004, &v);
    return v;
}

/* Address of a memory operand; for tile loads and stores, of row `row` (the index register is
 * then a stride: base + disp + row * (index << scale)). */
static uint64_t address(const struct dlrm_amx_insn *d, const struct cpu *cpu, uint64_t row) {
    const uint64_t *r = cpu->regs;
    uint64_t a = (uint64_t)d->disp + (d->rip_relative ? r[16] + (uint64_t)d->length : 0);
    uint64_t base = d->base >= 0 ? r[d->base] : 0, idx = d->index >= 0 ? r[d->index] : 0;
    if (d->addr32) a = (uint32_t)a, base = (uint32_t)base, idx = (uint32_t)idx;
    a += base + row * (idx << d->scale);
    if (d->addr32) a = (uint32_t)a;
    return a + seg_base(d->seg);
}

static int configured(const struct amx_state *s) { return s->cfg.palette != 0; }
static int tile_valid(const struct amx_state *s, int t) {
    return t >= 0 && t < 8 && s->cfg.rows[t] && s->cfg.colsb[t];
}

static const char *check_config(const struct tilecfg *c) {
    if (c->palette > 1) return "palette above 1 (only palette 1 exists)";
    if (c->palette == 0) return NULL;
    for (int k = 0; k < 14; k++)
        if (c->reserved[k]) return "reserved bytes 2-15 are not zero";
    for (int t = 8; t < 16; t++)
        if (c->colsb[t] || c->rows[t]) return "tiles 8-15 configured (palette 1 has 8)";
    for (int t = 0; t < 8; t++) {
        if (c->colsb[t] > 64) return "colsb above 64 bytes";
        if (c->rows[t] > 16) return "rows above 16";
        if (!c->rows[t] != !c->colsb[t]) return "a tile with rows or colsb zero but not both";
    }
    return NULL;
}

static void load_config(struct amx_state *s, const struct tilecfg *c) {
    memset(s, 0, sizeof *s); /* LDTILECFG and TILERELEASE zero every tile */
    if (c->palette) s->cfg = *c;
}

#define UD(why) do { *reason = (why); return FAULT_UD; } while (0)

static int check_tdp(const struct amx_state *s, const struct dlrm_amx_insn *d,
                     const char **reason) {
    int c = d->treg, a = d->trm, b = d->tvvvv;
    if (!configured(s)) UD("tiles are not configured (no LDTILECFG)");
    if (c == a || c == b || a == b) UD("the three tiles must be distinct");
    if (!tile_valid(s, c) || !tile_valid(s, a) || !tile_valid(s, b))
        UD("a tile operand is not configured (rows/colsb 0)");
    const struct tilecfg *g = &s->cfg;
    if ((g->colsb[c] | g->colsb[a] | g->colsb[b]) & 3) UD("colsb is not a multiple of 4");
    if (g->colsb[c] != g->colsb[b]) UD("dst.colsb != src2.colsb (N)");
    if (g->rows[c] != g->rows[a]) UD("dst.rows != src1.rows (M)");
    if (g->colsb[a] / 4 != g->rows[b]) UD("src1.colsb / 4 != src2.rows (K)");
    return FAULT_NONE;
}

/* Execute one decoded instruction on `s`. Returns FAULT_* and, on a fault, the reason. */
static int execute(struct amx_state *s, const struct dlrm_amx_insn *d, const struct cpu *cpu,
                   const char **reason) {
    struct tilecfg *g = &s->cfg;
    int t = d->treg;
    switch (d->op) {
    case OP_LDTILECFG: {
        struct tilecfg c;
        memcpy(&c, (const void *)address(d, cpu, 0), 64);
        if ((*reason = check_config(&c))) return FAULT_GP;
        load_config(s, &c);
        break;
    }
    case OP_STTILECFG:
        memcpy((void *)address(d, cpu, 0), g, 64); /* 64 zero bytes when not configured */
        break;
    case OP_TILERELEASE:
        memset(s, 0, sizeof *s);
        break;
    case OP_TILEZERO:
        if (!configured(s)) UD("tiles are not configured (no LDTILECFG)");
        if (!tile_valid(s, t)) UD("the tile is not configured (rows/colsb 0)");
        memset(s->tile[t], 0, sizeof s->tile[t]);
        break;
    case OP_TILELOADD:
    case OP_TILELOADDT1:
    case OP_TILESTORED: {
        if (!configured(s)) UD("tiles are not configured (no LDTILECFG)");
        if (!tile_valid(s, t)) UD("the tile is not configured (rows/colsb 0)");
        if (g->colsb[t] & 3) UD("colsb is not a multiple of 4");
        if (g->start_row >= g->rows[t]) UD("start_row >= rows");
        int colsb = g->colsb[t];
        if (d->op == OP_TILESTORED) {
            for (int r = g->start_row; r < g->rows[t]; r++)
                memcpy((void *)address(d, cpu, (uint64_t)r), s->tile[t][r], (size_t)colsb);
        } else {
            memset(s->tile[t][g->start_row], 0, (size_t)(16 - g->start_row) * 64);
            for (int r = g->start_row; r < g->rows[t]; r++)
                memcpy(s->tile[t][r], (const void *)address(d, cpu, (uint64_t)r), (size_t)colsb);
        }
        break;
    }
    default: { /* the dot products: dst += src1 . src2 */
        int f = check_tdp(s, d, reason);
        if (f) return f;
        int c = d->treg, a = d->trm, b = d->tvvvv, rows = g->rows[c], ncols = g->colsb[c] / 4,
            k = g->colsb[a] / 4;
        int sa = d->op == OP_TDPBSSD || d->op == OP_TDPBSUD;
        int sb = d->op == OP_TDPBSSD || d->op == OP_TDPBUSD;
        for (int m = 0; m < rows; m++) {
            uint32_t *crow = (uint32_t *)s->tile[c][m];
            const uint32_t *arow = (const uint32_t *)s->tile[a][m];
            for (int n = 0; n < ncols; n++) {
                if (d->op == OP_TDPBF16PS) {
                    crow[n] = dot_bf16(crow[n], (const uint16_t *)arow, s->tile[b][0], 64, n, k);
                } else {
                    for (int kk = 0; kk < k; kk++)
                        crow[n] = dot_int8(crow[n], arow[kk], ((const uint32_t *)s->tile[b][kk])[n],
                                           sa, sb);
                }
            }
            memset(crow + ncols, 0, (size_t)(64 - 4 * ncols)); /* write_row_and_zero */
        }
        memset(s->tile[c][rows], 0, (size_t)(16 - rows) * 64); /* zero_upper_rows */
    }
    }
    if (d->op != OP_LDTILECFG && d->op != OP_STTILECFG) g->start_row = 0; /* zero_tilecfg_start */
    __atomic_fetch_add(&counters[d->op], 1, __ATOMIC_RELAXED);
    return FAULT_NONE;
}

/* Test entry point: decode and execute `bytes` on the calling thread's software tile state,
 * with regs[0..15] the GPRs in encoding order and regs[16] the instruction's address; on
 * success regs[16] moves past it. Returns 0, 1 (#UD), 2 (#GP) or a negative decoder result;
 * `msg` gets a one-line description of a fault. */
EXPORT int dlrm_amx_emu_exec(const uint8_t *bytes, int len, uint64_t *regs, char *msg, int cap) {
    struct dlrm_amx_insn d;
    const char *reason = NULL;
    int rc = dlrm_amx_emu_decode(bytes, len, &d);
    struct text t = {msg, 0, cap};
    if (cap > 0) msg[0] = 0;
    if (rc < 0) {
        if (cap > 0) put(&t, decode_reason(rc));
        return rc;
    }
    struct amx_state *s = thread_state();
    if (!s) return -ENOMEM;
    struct cpu cpu = {regs, NULL, NULL};
    int fault = execute(s, &d, &cpu, &reason);
    if (fault) {
        if (cap > 0) put(&t, fault == FAULT_UD ? "#UD: " : "#GP: "), put(&t, reason);
        return fault;
    }
    regs[16] += (uint64_t)d.length;
    return 0;
}

/* The calling thread's software state: 64 bytes of configuration, 8 KB of tiles. */
EXPORT void dlrm_amx_emu_state(uint8_t *cfg, uint8_t *tiles) {
    struct amx_state *s = thread_state();
    if (!s) return;
    if (cfg) memcpy(cfg, &s->cfg, 64);
    if (tiles) memcpy(tiles, s->tile, sizeof s->tile);
}

EXPORT int dlrm_amx_emu_nops(void) { return OP_COUNT; }
EXPORT const char *dlrm_amx_emu_mnemonic(int op) {
    return op >= 0 && op < OP_COUNT ? MNEMONIC[op] : "";
}
EXPORT const char *dlrm_amx_emu_decode_reason(int rc) { return decode_reason(rc); }

EXPORT void dlrm_amx_emu_counts(uint64_t *out) {
    for (int k = 0; k < OP_COUNT; k++) out[k] = __atomic_load_n(&counters[k], __ATOMIC_RELAXED);
}

EXPORT void dlrm_amx_emu_reset_counts(void) {
    for (int k = 0; k < OP_COUNT; k++) __atomic_store_n(&counters[k], 0, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ the SIGILL handler */

static struct sigaction previous; /* the disposition we replaced, kept from the first install */
static int have_previous;
static uint32_t xsave_tilecfg_offset; /* CPUID.(0Dh,17).EBX, 0 if the CPU has no XTILECFG */

#define FPX_SW_OFFSET 464         /* struct _fpx_sw_bytes inside the FXSAVE area */
#define XFEATURE_XTILECFG 17

/* Where the interrupted context's tile configuration sits in the signal frame, if it does. */
static void frame_tilecfg(ucontext_t *uc, struct cpu *cpu) {
    uint8_t *fx = (uint8_t *)uc->uc_mcontext.fpregs;
    if (!fx || !xsave_tilecfg_offset) return;
    uint32_t magic, size;
    uint64_t features;
    memcpy(&magic, fx + FPX_SW_OFFSET, 4);
    memcpy(&features, fx + FPX_SW_OFFSET + 8, 8);
    memcpy(&size, fx + FPX_SW_OFFSET + 16, 4);
    if (magic != FP_XSTATE_MAGIC1 || !(features >> XFEATURE_XTILECFG & 1) ||
        xsave_tilecfg_offset + 64 > size)
        return;
    cpu->frame_cfg = fx + xsave_tilecfg_offset;
    cpu->frame_bv = (uint64_t *)(fx + 512); /* XSAVE header: XSTATE_BV */
}

/* Native LDTILECFG/TILERELEASE ran since we last looked: take the configuration, zero tiles. */
static void follow_native_config(struct amx_state *s, const struct cpu *cpu) {
    struct tilecfg native;
    memset(&native, 0, 64);
    if (*cpu->frame_bv >> XFEATURE_XTILECFG & 1) memcpy(&native, cpu->frame_cfg, 64);
    uint8_t *n = (uint8_t *)&native, *o = (uint8_t *)&s->cfg;
    if (n[0] != o[0] || memcmp(n + 2, o + 2, 62)) load_config(s, &native);
}

static void publish_native_config(const struct amx_state *s, const struct cpu *cpu) {
    memcpy(cpu->frame_cfg, &s->cfg, 64);
    if (configured(s)) *cpu->frame_bv |= 1ull << XFEATURE_XTILECFG;
    else *cpu->frame_bv &= ~(1ull << XFEATURE_XTILECFG);
}

/* Up to 15 bytes at `rip`: those on its own page directly, the rest only if readable. */
static int read_code(uint64_t rip, uint8_t *out) {
    uint64_t page_end = (rip | 4095) + 1;
    int n = page_end - rip >= 15 ? 15 : (int)(page_end - rip);
    memcpy(out, (const void *)rip, (size_t)n);
    if (n < 15) {
        size_t rest = (size_t)(15 - n);
        struct iovec local = {out + n, rest}, remote = {(void *)page_end, rest};
        ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (got > 0) n += (int)got;
    }
    return n;
}

static void report(const char *what, const uint8_t *bytes, int n, uint64_t rip, const char *why,
                   const struct dlrm_amx_insn *d) {
    char buf[512];
    struct text t = {buf, 0, sizeof buf};
    put(&t, "dlrm-tvm AMX emulator: "), put(&t, what), put(&t, " at 0x"), put_hex(&t, rip, 1);
    if (d) {
        char ins[96];
        dlrm_amx_emu_format(d, ins, sizeof ins);
        put(&t, ": "), put(&t, ins);
    }
    put(&t, " (bytes");
    for (int k = 0; k < n; k++) put(&t, " "), put_hex(&t, bytes[k], 2);
    put(&t, "): "), put(&t, why), put(&t, "\n");
    write_all(buf, t.len);
}

static void set_default(int sig) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
}

/* Hand the signal to whoever had SIGILL before us. A returning handler resumes the faulting
 * instruction, as the kernel would; SIG_DFL and SIG_IGN become SIG_DFL (a fault cannot be
 * ignored), so the instruction faults again and the process dies of SIGILL. */
static void chain(int sig, siginfo_t *si, void *uc) {
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, si, uc);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
    } else if (si->si_code > 0) {
        set_default(sig);
    } else if (previous.sa_handler == SIG_DFL) { /* sent by kill(): deliver it on return */
        set_default(sig);
        raise(sig);
    }
}

static void die_of(int sig, int status) {
    sigset_t set;
    set_default(sig);
    sigemptyset(&set);
    sigaddset(&set, sig);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    raise(sig);
    _exit(status);
}

/* force_align_arg_pointer: the stack may arrive misaligned (qemu-user does that), and the
 * compiler keeps SSE values on it. */
__attribute__((force_align_arg_pointer)) static void on_sigill(int sig, siginfo_t *si, void *ucv) {
    ucontext_t *uc = ucv;
    int saved_errno = errno;
    if (si->si_code <= 0) { /* sent by a process, not an instruction */
        chain(sig, si, ucv);
        errno = saved_errno;
        return;
    }
    greg_t *g = uc->uc_mcontext.gregs;
    uint64_t regs[17] = {g[REG_RAX], g[REG_RCX], g[REG_RDX], g[REG_RBX], g[REG_RSP], g[REG_RBP],
                         g[REG_RSI], g[REG_RDI], g[REG_R8],  g[REG_R9],  g[REG_R10], g[REG_R11],
                         g[REG_R12], g[REG_R13], g[REG_R14], g[REG_R15], g[REG_RIP]};
    uint8_t bytes[15];
    int n = read_code(regs[16], bytes);
    struct dlrm_amx_insn d;
    int rc = dlrm_amx_emu_decode(bytes, n, &d);
    if (rc < 0) {
        report("SIGILL not handled", bytes, n, regs[16], decode_reason(rc), NULL);
        chain(sig, si, ucv);
        errno = saved_errno;
        return;
    }
    struct amx_state *s = thread_state();
    if (!s) {
        report("#UD", bytes, d.length, regs[16], "no memory for the thread's tile state", &d);
        die_of(SIGILL, 132);
    }
    struct cpu cpu = {regs, NULL, NULL};
    frame_tilecfg(uc, &cpu);
    if (cpu.frame_cfg) follow_native_config(s, &cpu);
    const char *reason = NULL;
    int fault = execute(s, &d, &cpu, &reason);
    if (fault == FAULT_UD) {
        report("#UD", bytes, d.length, regs[16], reason, &d);
        chain(sig, si, ucv); /* faulthandler's traceback, if it is there */
        die_of(SIGILL, 132);
    }
    if (fault == FAULT_GP) {
        report("#GP", bytes, d.length, regs[16], reason, &d);
        die_of(SIGSEGV, 139);
    }
    if (cpu.frame_cfg && (d.op == OP_LDTILECFG || d.op == OP_TILERELEASE))
        publish_native_config(s, &cpu);
    g[REG_RIP] += d.length;
    errno = saved_errno;
}

static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

EXPORT int dlrm_amx_emu_installed(void) {
    struct sigaction cur;
    if (sigaction(SIGILL, NULL, &cur)) return 0;
    return (cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigill;
}

/* Install the handler (process-wide). Idempotent; if another handler replaced ours since, ours
 * goes back on top and keeps the handler it first replaced (re-chaining through one that
 * chains back to us would loop). No SA_ONSTACK: the handler needs about 2 KB of the thread's
 * own stack and no alternate stack (which exists for stack overflows, not SIGILL). */
EXPORT int dlrm_amx_emu_install(void) {
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&install_lock);
    int rc = 0;
    if (!dlrm_amx_emu_installed()) {
        unsigned a = 0, b = 0, c = 0, dx = 0;
        if (__get_cpuid_max(0, NULL) >= 0xd) __cpuid_count(0xd, XFEATURE_XTILECFG, a, b, c, dx);
        xsave_tilecfg_offset = a >= 64 ? b : 0;
        struct sigaction sa, old;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigill;
        sa.sa_flags = SA_SIGINFO;
        sigemptyset(&sa.sa_mask);
        if (sigaction(SIGILL, &sa, &old)) rc = errno;
        else if (!have_previous) previous = old, have_previous = 1;
    }
    pthread_mutex_unlock(&install_lock);
    return rc;
}

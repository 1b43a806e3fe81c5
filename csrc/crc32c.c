/*
 * crc32c.c - CRC-32C with a hardware path (SSE4.2) and a table fallback.
 *
 * The fast tier checks every read against per-block checksums, so this runs on
 * every fast-tier hit: the hardware path does ~8 bytes per cycle, the table
 * one byte per step.
 */
#include "crc32c.h"

#include <string.h>

#define POLY 0x82F63B78u /* Castagnoli, reflected */

static uint32_t table[256];
static int table_ready;

static void make_table(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        table[i] = c;
    }
    table_ready = 1;
}

uint32_t tierfs_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    if (!table_ready)
        make_table(); /* idempotent: a race writes the same values */
    crc = ~crc;
    while (len--)
        crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t c = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        len--;
    }
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = _mm_crc32_u8((uint32_t)c, *p++);
    return ~(uint32_t)c;
}

int tierfs_crc32c_hw(void)
{
    static int hw = -1;
    if (hw < 0) {
        __builtin_cpu_init();
        hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    }
    return hw;
}

uint32_t tierfs_crc32c(uint32_t crc, const void *buf, size_t len)
{
    return tierfs_crc32c_hw() ? crc32c_hw(crc, buf, len) : tierfs_crc32c_sw(crc, buf, len);
}
#else
int tierfs_crc32c_hw(void) { return 0; }

uint32_t tierfs_crc32c(uint32_t crc, const void *buf, size_t len)
{
    return tierfs_crc32c_sw(crc, buf, len);
}
#endif

static void put_le32(unsigned char *out, uint32_t v)
{
    out[0] = (unsigned char)v;
    out[1] = (unsigned char)(v >> 8);
    out[2] = (unsigned char)(v >> 16);
    out[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *in)
{
    return (uint32_t)in[0] | (uint32_t)in[1] << 8 | (uint32_t)in[2] << 16 |
           (uint32_t)in[3] << 24;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* Three whole pieces at once: three independent chains keep the crc32 unit busy
 * (one chain waits 3 cycles per instruction). */
__attribute__((target("sse4.2")))
static void crc32c_hw3(const unsigned char *p, size_t block, uint32_t out[3])
{
    uint64_t c0 = 0xffffffffu, c1 = 0xffffffffu, c2 = 0xffffffffu;
    const unsigned char *p1 = p + block, *p2 = p + 2 * block;
    for (size_t i = 0; i < block; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p1 + i, 8);
        memcpy(&w2, p2 + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
    }
    out[0] = ~(uint32_t)c0;
    out[1] = ~(uint32_t)c1;
    out[2] = ~(uint32_t)c2;
}
#endif

/* Checksums of the pieces of buf into crcs[0..n). */
static void pieces(const unsigned char *p, size_t len, size_t block, uint32_t *crcs)
{
    size_t off = 0, i = 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (tierfs_crc32c_hw() && block % 8 == 0) {
        for (; len - off >= 3 * block; off += 3 * block, i += 3)
            crc32c_hw3(p + off, block, crcs + i);
    }
#endif
    for (; off < len; off += block, i++) {
        size_t n = len - off < block ? len - off : block;
        crcs[i] = tierfs_crc32c(0, p + off, n);
    }
}

void tierfs_crc32c_blocks(const void *buf, size_t len, size_t block, unsigned char *out)
{
    uint32_t crcs[48];
    const unsigned char *p = buf;
    /* In batches of 48 pieces, so the scratch array stays on the stack. */
    for (size_t off = 0; off < len; off += 48 * block) {
        size_t n = len - off < 48 * block ? len - off : 48 * block;
        size_t k = (n + block - 1) / block;
        pieces(p + off, n, block, crcs);
        for (size_t i = 0; i < k; i++, out += 4)
            put_le32(out, crcs[i]);
    }
}

int64_t tierfs_crc32c_verify(const void *buf, size_t len, size_t block,
                             const unsigned char *want)
{
    uint32_t crcs[48];
    const unsigned char *p = buf;
    int64_t base = 0;
    for (size_t off = 0; off < len; off += 48 * block, base += 48) {
        size_t n = len - off < 48 * block ? len - off : 48 * block;
        size_t k = (n + block - 1) / block;
        pieces(p + off, n, block, crcs);
        for (size_t i = 0; i < k; i++)
            if (crcs[i] != get_le32(want + 4 * (base + (int64_t)i)))
                return base + (int64_t)i;
    }
    return -1;
}

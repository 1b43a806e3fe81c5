/*
 * crc32c.h - CRC-32C (Castagnoli) for the fast tier's block checksums.
 *
 * Uses the SSE4.2 crc32 instruction when the CPU has it (checked once, at run
 * time), else a byte-wise table. Block checksums are written as little-endian
 * 32-bit words, so a cache directory means the same on every host.
 */
#ifndef TIERFS_CRC32C_H
#define TIERFS_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extend `crc` (0 to start) over `len` bytes of `buf`. */
uint32_t tierfs_crc32c(uint32_t crc, const void *buf, size_t len);

/* The same, always with the table (for tests against the hardware path). */
uint32_t tierfs_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* 1 if the hardware instruction is used. */
int tierfs_crc32c_hw(void);

/* Checksums of consecutive `block`-byte pieces of buf (the last may be short):
 * ceil(len / block) little-endian words into `out`. */
void tierfs_crc32c_blocks(const void *buf, size_t len, size_t block, unsigned char *out);

/* Compare the pieces of buf with `want` (as written by tierfs_crc32c_blocks):
 * -1 if all match, else the index of the first piece that does not. */
int64_t tierfs_crc32c_verify(const void *buf, size_t len, size_t block,
                             const unsigned char *want);

#endif

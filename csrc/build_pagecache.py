"""cffi builder for the C page cache: compiles ``fusefs._pagecache``.

Out-of-line API mode: cffi generates a C extension that calls
``csrc/pagecache.c`` directly and releases the GIL around every call.
``setup.py`` finds ``ffibuilder`` through ``cffi_modules``; running this file
builds the module in place for development. ``TIERFS_PAGECACHE_CFLAGS``
appends compiler flags (``csrc/sanitize.sh`` uses it for ASan/UBSan builds).
"""

from __future__ import annotations

import os
import pathlib
import shlex

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

CDEF = """
#define PAGECACHE_MIN_PAGE_SIZE 4096
#define PAGECACHE_MAX_PAGE_SIZE 1048576
#define PAGECACHE_POLICY_S3FIFO 0
#define PAGECACHE_POLICY_CLOCK 1
#define PAGECACHE_HINT_NORMAL 0
#define PAGECACHE_HINT_DONT_ADMIT 1
#define PAGECACHE_HINT_PIN 2
#define PAGECACHE_QUEUE_SMALL 1
#define PAGECACHE_QUEUE_MAIN 2
#define PAGECACHE_QUEUE_PINNED 3

typedef struct pagecache pagecache_t;

typedef struct pagecache_config {
    int policy;
    double small_ratio;
    double ghost_ratio;
    int move_to_main_threshold;
} pagecache_config_t;

typedef struct pagecache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t insertions;
    uint64_t updates;
    uint64_t evictions;
    uint64_t ghost_hits;
    uint64_t not_admitted;
    uint64_t invalidations;
    uint64_t busy;
    uint64_t bytes_used;
    uint64_t pages_used;
    uint64_t pinned_pages;
    uint64_t small_pages;
    uint64_t main_pages;
    uint64_t ghost_entries;
    uint64_t capacity_pages;
    uint64_t page_size;
    uint64_t shards;
} pagecache_stats_t;

void pagecache_config_default(pagecache_config_t *cfg);
int pagecache_create(pagecache_t **out, uint64_t capacity_bytes,
                     uint32_t page_size, const pagecache_config_t *cfg);
void pagecache_destroy(pagecache_t *pc);
int64_t pagecache_get(pagecache_t *pc, uint64_t file_id, uint64_t page,
                      void *buf, size_t buflen);
int64_t pagecache_get_range(pagecache_t *pc, uint64_t file_id, uint64_t first,
                            void *buf, size_t buflen);
int64_t pagecache_peek(pagecache_t *pc, uint64_t file_id, uint64_t page,
                       void *buf, size_t buflen);
int pagecache_contains(pagecache_t *pc, uint64_t file_id, uint64_t page);
int pagecache_put(pagecache_t *pc, uint64_t file_id, uint64_t page,
                  const void *data, size_t len, int hint);
int pagecache_pin(pagecache_t *pc, uint64_t file_id, uint64_t page);
int pagecache_unpin(pagecache_t *pc, uint64_t file_id, uint64_t page);
int64_t pagecache_invalidate_page(pagecache_t *pc, uint64_t file_id,
                                  uint64_t page);
int64_t pagecache_invalidate_range(pagecache_t *pc, uint64_t file_id,
                                   uint64_t first, uint64_t end);
int64_t pagecache_invalidate_file(pagecache_t *pc, uint64_t file_id);
int pagecache_stats(pagecache_t *pc, pagecache_stats_t *out);
uint64_t pagecache_meta_bytes(const pagecache_t *pc);
double pagecache_meta_bytes_per_page(double ghost_ratio);
void pagecache_struct_sizes(size_t *page_desc, size_t *ghost_node,
                            size_t *hash_slot);
int pagecache_debug_entry(pagecache_t *pc, uint64_t file_id, uint64_t page,
                          int *queue, int *freq, int *pins);
int pagecache_debug_in_ghost(pagecache_t *pc, uint64_t file_id, uint64_t page);
int pagecache_debug_check(pagecache_t *pc);

uint32_t tierfs_crc32c(uint32_t crc, const void *buf, size_t len);
uint32_t tierfs_crc32c_sw(uint32_t crc, const void *buf, size_t len);
int tierfs_crc32c_hw(void);
void tierfs_crc32c_blocks(const void *buf, size_t len, size_t block, unsigned char *out);
int64_t tierfs_crc32c_verify(const void *buf, size_t len, size_t block,
                             const unsigned char *want);
"""

# Relative paths: setuptools runs the builder from the project root and
# refuses absolute source paths in an sdist build.
_SRC = [os.path.relpath(HERE / "pagecache.c"), os.path.relpath(HERE / "crc32c.c")]
_INC = os.path.relpath(HERE)

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "fusefs._pagecache",
    '#include "pagecache.h"\n#include "crc32c.h"\n',
    sources=_SRC,
    include_dirs=[_INC],
    extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-O2"]
    + shlex.split(os.environ.get("TIERFS_PAGECACHE_CFLAGS", "")),
    extra_link_args=["-pthread"]
    + shlex.split(os.environ.get("TIERFS_PAGECACHE_LDFLAGS", "")),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)

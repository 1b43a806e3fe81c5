/*
 * pagecache.h - the DRAM tier of tierfs: a fixed-size page cache with S3-FIFO
 * eviction.
 *
 * One arena of equal pages is allocated at create time; nothing is allocated
 * afterwards. Pages are keyed by (file id, page number). Every function that
 * can fail returns a negative errno value:
 *   -EINVAL   bad arguments (NULL handle, length 0 or above the page size, ...)
 *   -ENOENT   the page is not cached
 *   -ENOMEM   allocation failed at create time (or, in theory, a hash shard
 *             is full: see pagecache.c)
 *   -EBUSY    no page can be evicted: every page is pinned or being filled
 *   -ENOBUFS  the caller's buffer is smaller than the cached page
 *   -EOVERFLOW a page's pin count would overflow
 *   -EIO      pagecache_debug_check() found an inconsistency (a bug)
 * The handle is opaque and internally locked: all functions except
 * pagecache_destroy() may be called from any number of threads at once.
 * Nothing here calls back into the caller.
 */
#ifndef TIERFS_PAGECACHE_H
#define TIERFS_PAGECACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PAGECACHE_MIN_PAGE_SIZE 4096u
#define PAGECACHE_MAX_PAGE_SIZE 1048576u

/* Eviction policies. CLOCK (FIFO with a 1-bit reference, second chance) is
 * S3-FIFO's main queue alone: hits stay as cheap, but a scan flushes it. */
#define PAGECACHE_POLICY_S3FIFO 0
#define PAGECACHE_POLICY_CLOCK 1

/* Admission hints for pagecache_put(). */
#define PAGECACHE_HINT_NORMAL 0
#define PAGECACHE_HINT_DONT_ADMIT 1 /* a detected stream: no-op, counted */
#define PAGECACHE_HINT_PIN 2        /* admit (or keep) and take one pin */

/* Where a page sits, as reported by pagecache_debug_entry(). */
#define PAGECACHE_QUEUE_SMALL 1
#define PAGECACHE_QUEUE_MAIN 2
#define PAGECACHE_QUEUE_PINNED 3

typedef struct pagecache pagecache_t;

typedef struct pagecache_config {
    int policy;                 /* PAGECACHE_POLICY_S3FIFO or _CLOCK */
    /* S3-FIFO only (checked but unused under CLOCK): */
    double small_ratio;         /* small FIFO share of the pages, (0, 1); 0.1 */
    double ghost_ratio;         /* ghost entries per page, [0, 1]; 0.9 */
    int move_to_main_threshold; /* hits in the small FIFO to move, 1..3; 2 */
} pagecache_config_t;

typedef struct pagecache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t insertions;    /* new pages stored */
    uint64_t updates;       /* puts that overwrote a cached page */
    uint64_t evictions;
    uint64_t ghost_hits;    /* insertions that found their key in the ghost */
    uint64_t not_admitted;  /* puts with PAGECACHE_HINT_DONT_ADMIT */
    uint64_t invalidations; /* pages dropped by pagecache_invalidate_* */
    uint64_t busy;          /* puts refused with -EBUSY */
    uint64_t bytes_used;    /* valid bytes held (partial pages count short) */
    uint64_t pages_used;    /* pages held, pinned or not */
    uint64_t pinned_pages;
    uint64_t small_pages;
    uint64_t main_pages;
    uint64_t ghost_entries;
    uint64_t capacity_pages;
    uint64_t page_size;
    uint64_t shards;        /* lock stripes over the hash */
} pagecache_stats_t;

/* Fill *cfg with the defaults (S3-FIFO, 0.1, 0.9, 2). */
void pagecache_config_default(pagecache_config_t *cfg);

/*
 * Create a cache of capacity_bytes / page_size pages. page_size must be a
 * power of two in [4 KiB, 1 MiB]; cfg may be NULL for the defaults.
 */
int pagecache_create(pagecache_t **out, uint64_t capacity_bytes,
                     uint32_t page_size, const pagecache_config_t *cfg);

/* Free everything. The caller guarantees no other call is in flight. */
void pagecache_destroy(pagecache_t *pc);

/*
 * Copy a cached page into buf. Returns the number of valid bytes copied
 * (> 0), -ENOENT on a miss, -ENOBUFS if buflen is below the page's length.
 * A hit raises the page's 2-bit frequency; hits and misses are counted.
 */
int64_t pagecache_get(pagecache_t *pc, uint64_t file_id, uint64_t page,
                      void *buf, size_t buflen);

/*
 * Read consecutive pages first, first + 1, ... of one file into buf, page i
 * at offset i * page_size, in one call: what a large read wants, with the
 * per-call cost paid once. Stops at the first miss (counted as a miss), after
 * a short page (the file's last), or at the first page that does not fit in
 * buflen (not counted). Returns the number of bytes copied: 0 if the first
 * page missed. Each page copied counts as a hit, as with pagecache_get().
 */
int64_t pagecache_get_range(pagecache_t *pc, uint64_t file_id, uint64_t first,
                            void *buf, size_t buflen);

/* Like pagecache_get() but with no effect on frequencies or counters. */
int64_t pagecache_peek(pagecache_t *pc, uint64_t file_id, uint64_t page,
                       void *buf, size_t buflen);

/*
 * 1 if the page is cached, 0 if not, -EINVAL on bad arguments. Takes only the
 * page's shard lock (never the queue lock) and touches no frequency or
 * counter: a probe for the read path.
 */
int pagecache_contains(pagecache_t *pc, uint64_t file_id, uint64_t page);

/*
 * Store len bytes (1..page_size; a short last page keeps its length) for a
 * page. An already cached page is overwritten in place and keeps its queue
 * and frequency. Returns 0, or -EBUSY when nothing can be evicted.
 */
int pagecache_put(pagecache_t *pc, uint64_t file_id, uint64_t page,
                  const void *data, size_t len, int hint);

/* Pins nest. A pinned page is never evicted; the last unpin puts it at the
 * head of the main FIFO. */
int pagecache_pin(pagecache_t *pc, uint64_t file_id, uint64_t page);
int pagecache_unpin(pagecache_t *pc, uint64_t file_id, uint64_t page);

/*
 * Drop cached pages, pinned or not (a changed source wins over a pin).
 * Return the number of pages dropped (>= 0). Ghost entries are kept: they
 * hold no data. _range drops first <= page < end; _file drops every page of
 * the file. A per-file index makes both O(1) for a file with no page cached;
 * otherwise _file costs O(pages of the file), and _range O(end - first) up to
 * a span of capacity pages, O(pages of the file) beyond (see pagecache.c).
 */
int64_t pagecache_invalidate_page(pagecache_t *pc, uint64_t file_id,
                                  uint64_t page);
int64_t pagecache_invalidate_range(pagecache_t *pc, uint64_t file_id,
                                   uint64_t first, uint64_t end);
int64_t pagecache_invalidate_file(pagecache_t *pc, uint64_t file_id);

int pagecache_stats(pagecache_t *pc, pagecache_stats_t *out);

/* Metadata bytes allocated by this cache, the page arena excluded. */
uint64_t pagecache_meta_bytes(const pagecache_t *pc);

/*
 * Metadata bytes per cached page for the given ghost ratio, from the struct
 * sizes and the hash tables' sizing alone: what a large cache converges to.
 */
double pagecache_meta_bytes_per_page(double ghost_ratio);

/* Struct sizes behind pagecache_meta_bytes_per_page(). */
void pagecache_struct_sizes(size_t *page_desc, size_t *ghost_node,
                            size_t *hash_slot);

/*
 * Test hooks, no side effects: where a cached page sits (queue, frequency,
 * pins), and whether a key is in the ghost FIFO (1) or not (0).
 */
int pagecache_debug_entry(pagecache_t *pc, uint64_t file_id, uint64_t page,
                          int *queue, int *freq, int *pins);
int pagecache_debug_in_ghost(pagecache_t *pc, uint64_t file_id, uint64_t page);

/*
 * Test hook: verify the internal structures against one another (free list,
 * queues, pins, byte count, hash, ghost, and the file index: every cached
 * page on exactly its file's list). O(capacity); takes the queue lock, and
 * each shard lock in turn, so it may run alongside other calls. Returns 0,
 * or -EIO if an invariant does not hold.
 */
int pagecache_debug_check(pagecache_t *pc);

#ifdef __cplusplus
}
#endif

#endif /* TIERFS_PAGECACHE_H */

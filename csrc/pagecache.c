/*
 * pagecache.c - see pagecache.h for the contract.
 *
 * Layout. One arena of n equal pages; page i's bytes live at arena + i * size
 * and its descriptor at pages[i]. Descriptors double as the nodes of the
 * S3-FIFO queues (intrusive, 32-bit links) and of the free list. The hash
 * maps (file id, page) to a descriptor index; it is split into 2^k shards,
 * each an open-addressing table (linear probing, backward-shift deletion, no
 * tombstones) with its own mutex. The ghost FIFO holds 64-bit fingerprints of
 * evicted keys in its own node pool and table.
 * The file index finds a file's pages without a scan: every keyed page is on
 * its file's doubly linked list (intrusive 32-bit links fnext/fprev in the
 * descriptor), and an open-addressing table (linear probing, backward-shift
 * deletion) maps a file id to the head of its list. A slot holds only the
 * head's descriptor index: the file id is read from that descriptor, so a
 * slot costs 4 bytes. A file is in the table exactly while it has a keyed
 * page; at most n_pages files are, and the table has 1.5 n_pages + 1 slots.
 *
 * Locking. Two kinds of lock:
 *   qlock         the S3-FIFO queues, the ghost, the free list, the file
 *                 index (its table and the descriptors' fnext/fprev), page
 *                 descriptors' queue/links/pins and the counters kept in
 *                 struct pagecache. A page's key (file_id, page) is written
 *                 only under qlock plus the shard lock of the new key, so
 *                 either lock makes the key of a keyed page stable.
 *   shard->lock   one hash shard: its table, its hit/miss counters, and the
 *                 bytes (and length) of every page reachable through it.
 *   LOCK ORDER:   qlock before any shard lock; never two shard locks at once.
 * A hit takes only its shard's lock: S3-FIFO hits do not move pages between
 * queues, they only raise a 2-bit frequency, kept as a relaxed atomic because
 * eviction reads and lowers it under qlock alone. The page's bytes are copied
 * while the shard lock is held; eviction and invalidation must take that
 * lock to unhook a page from the hash, so a page cannot be reused under a
 * reader. Threads hitting different shards never share a lock or a written
 * cache line (the per-shard counters sit in the shard's own line).
 * A put of a new page reserves a free page under qlock (evicting as needed),
 * copies the data in, then publishes it under qlock + shard lock. Pages over
 * 16 KiB are copied with no lock held (nobody can reach a reserved page), so
 * two threads filling misses copy in parallel and only the queue bookkeeping
 * is serialised; smaller ones are copied under qlock, which costs less than
 * a second acquisition.
 *
 * Eviction mirrors libcachesim's S3FIFO.c (the variant that inserts into the
 * main FIFO while the small FIFO is full before the first eviction) so that
 * single-threaded miss counts match it exactly; tests/test_pagecache_libcachesim.py
 * holds us to that. libcachesim lets frequencies grow without bound but only
 * ever compares them with the threshold (<= 3 here) and reinserts with
 * min(freq, 3) - 1, so a counter saturating at 3 behaves identically.
 * Deliberate differences, none of which a get-then-put trace can see:
 *   - the ghost stores a 64-bit fingerprint, not the key (a false ghost hit
 *     needs a 64-bit collision between different files; pages of one file
 *     never collide, the hash being a bijection of the page number);
 *   - the small FIFO holds at least one page (libcachesim caches nothing at
 *     all when capacity * small_ratio < 2);
 *   - pinned pages leave the queues and count against capacity; -EBUSY when
 *     only pinned or reserved pages remain;
 *   - under concurrent hits a page could keep its frequency up forever, so
 *     one eviction rotates the main FIFO at most 4x its length before it
 *     evicts the tail regardless (single-threaded, 3x always suffices).
 *
 * File invalidation walks the file's list under qlock: O(1) for a file with
 * no page cached (one probe of the file table), O(pages of the file)
 * otherwise, each page unhooked from its shard under that shard's lock. The
 * engine invalidates on every first open, create and forget, on its event
 * loop; the scan of every descriptor this replaces took 0.1-7 ms at 0.5-4 GiB.
 * Range invalidation of at most capacity pages probes the hash page by page;
 * a wider range walks the file's list (at most capacity pages). Both return
 * at once for a file with no page cached. The index costs 8 bytes in each
 * descriptor (40 instead of 32) and 6 bytes of file slots a page.
 */
#define _POSIX_C_SOURCE 200809L

#include "pagecache.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NIL UINT32_MAX
#define MAX_SHARD_BITS 6                /* at most 64 stripes */
#define MIN_PAGES_PER_SHARD 64u         /* keeps shard loads even */
#define CACHE_LINE 64
#define ARENA_ALIGN 4096
#define UNLOCKED_COPY_MIN 16384u        /* bigger puts copy outside qlock */

enum { Q_FREE = 0, Q_SMALL = 1, Q_MAIN = 2, Q_PINNED = 3, Q_RESERVED = 4 };

/* 40 bytes: the whole per-page cost apart from hash and file slots and the
 * ghost. */
typedef struct page_desc {
    uint64_t file_id;
    uint64_t page;
    uint32_t next;  /* toward the tail (older); free-list link */
    uint32_t prev;  /* toward the head (newer) */
    uint32_t fnext; /* the file's list: NIL at its end, or if unkeyed */
    uint32_t fprev; /* NIL at the file's head, or if unkeyed */
    uint32_t len;
    _Atomic uint8_t freq;
    uint8_t queue;
    uint16_t pins;
} page_desc_t;

typedef struct ghost_node {
    uint64_t fp;
    uint32_t next;
    uint32_t prev;
} ghost_node_t;

typedef struct fifo {
    uint32_t head; /* newest */
    uint32_t tail; /* oldest: the next to leave */
    uint32_t count;
} fifo_t;

typedef struct shard {
    /* Guards this shard's slots, count, hits and misses, and the bytes and
     * length of every page reachable through it. Taken after qlock, if at
     * all; never two shard locks at once. */
    _Alignas(CACHE_LINE) pthread_mutex_t lock;
    uint32_t *slots; /* descriptor index or NIL */
    uint32_t cap;
    uint32_t count;
    uint64_t hits;
    uint64_t misses;
} shard_t;

struct pagecache {
    /* Set at create, read-only afterwards. */
    uint32_t page_size;
    uint32_t n_pages;
    uint32_t shard_bits;
    uint32_t n_shards;
    uint32_t small_cap;
    uint32_t main_cap;
    uint32_t ghost_cap;
    uint32_t ghost_slot_cap;
    uint32_t file_slot_cap;
    int threshold;
    int policy;
    uint8_t max_freq; /* 3 for S3-FIFO's 2-bit counter, 1 for CLOCK */
    unsigned char *arena;
    page_desc_t *pages;
    shard_t *shards;
    uint32_t *slot_mem;
    ghost_node_t *ghost_nodes;
    uint32_t *ghost_slots;
    uint32_t *file_slots; /* head descriptor of one file's list, or NIL */
    uint64_t meta_bytes;
    bool qlock_ready; /* for a create that fails half-way */

    /* qlock guards what follows up to not_admitted, the file index
     * (file_slots and the descriptors' fnext/fprev), the ghost nodes and
     * slots, and the descriptors' queue, next/prev and pins; a key is written
     * under qlock and the key's shard lock. LOCK ORDER: qlock, then at most
     * one shard lock. */
    _Alignas(CACHE_LINE) pthread_mutex_t qlock;
    fifo_t small;
    fifo_t main;
    fifo_t ghost;
    uint32_t free_head;
    uint32_t ghost_free;
    uint32_t used; /* queued + pinned + reserved pages */
    uint32_t pinned;
    uint32_t files; /* files with a keyed page: the file table's load */
    bool has_evicted;
    uint64_t insertions;
    uint64_t updates;
    uint64_t evictions;
    uint64_t ghost_hits;
    uint64_t invalidations;
    uint64_t busy;

    /* Touched without qlock (stream puts skip it; updates hold a shard). */
    _Alignas(CACHE_LINE) _Atomic uint64_t not_admitted;
    _Atomic uint64_t bytes_used;
};

/* ---- hashing ------------------------------------------------------------ */

static inline uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* For a fixed file this is a bijection of the page number (xor with a
 * constant and fmix64 are both invertible): pages of one file never share a
 * fingerprint. */
static inline uint64_t key_hash(uint64_t file_id, uint64_t page)
{
    return fmix64((file_id * 0x9e3779b97f4a7c15ULL) ^ fmix64(page));
}

/* Map the low 32 bits onto [0, cap) without a division (Lemire). */
static inline uint32_t reduce32(uint64_t h, uint32_t cap)
{
    return (uint32_t)(((h & 0xffffffffULL) * (uint64_t)cap) >> 32);
}

/* Shards take the top bits so that they are independent of the slot. */
static inline shard_t *shard_for(const pagecache_t *pc, uint64_t h)
{
    if (pc->shard_bits == 0)
        return &pc->shards[0];
    return &pc->shards[h >> (64 - pc->shard_bits)];
}

static inline uint32_t next_slot(uint32_t i, uint32_t cap)
{
    return i + 1 == cap ? 0 : i + 1;
}

/* ---- hash shards (caller holds the shard lock) ---------------------------- */

static uint32_t shard_find_slot(const pagecache_t *pc, const shard_t *sh,
                                uint64_t h, uint64_t file_id, uint64_t page)
{
    uint32_t i = reduce32(h, sh->cap);
    for (;;) {
        uint32_t s = sh->slots[i];
        if (s == NIL)
            return NIL;
        const page_desc_t *p = &pc->pages[s];
        if (p->page == page && p->file_id == file_id)
            return i;
        i = next_slot(i, sh->cap);
    }
}

static int shard_insert(shard_t *sh, uint64_t h, uint32_t idx)
{
    /* Keep one slot empty so that probes always terminate. */
    if (sh->count + 1 >= sh->cap)
        return -ENOMEM;
    uint32_t i = reduce32(h, sh->cap);
    while (sh->slots[i] != NIL)
        i = next_slot(i, sh->cap);
    sh->slots[i] = idx;
    sh->count++;
    return 0;
}

/* Backward-shift deletion: pull later entries of the cluster into the hole
 * when the hole lies on their probe path, so lookups never need tombstones. */
static void shard_delete_at(const pagecache_t *pc, shard_t *sh, uint32_t hole)
{
    uint32_t j = hole;
    for (;;) {
        j = next_slot(j, sh->cap);
        uint32_t s = sh->slots[j];
        if (s == NIL)
            break;
        const page_desc_t *p = &pc->pages[s];
        uint32_t home = reduce32(key_hash(p->file_id, p->page), sh->cap);
        bool movable = hole <= j ? (home <= hole || home > j)
                                 : (home <= hole && home > j);
        if (movable) {
            sh->slots[hole] = s;
            hole = j;
        }
    }
    sh->slots[hole] = NIL;
    sh->count--;
}

/* Unhook a found page from its shard (shard lock held) and drop its bytes
 * from the total. */
static void shard_remove_locked(pagecache_t *pc, shard_t *sh, uint32_t pos)
{
    uint32_t idx = sh->slots[pos];
    atomic_fetch_sub_explicit(&pc->bytes_used, pc->pages[idx].len,
                              memory_order_relaxed);
    shard_delete_at(pc, sh, pos);
}

/* Same, taking the shard lock; qlock held so the key cannot change. */
static void hash_remove(pagecache_t *pc, uint32_t idx)
{
    const page_desc_t *p = &pc->pages[idx];
    uint64_t h = key_hash(p->file_id, p->page);
    shard_t *sh = shard_for(pc, h);
    pthread_mutex_lock(&sh->lock);
    uint32_t pos = shard_find_slot(pc, sh, h, p->file_id, p->page);
    if (pos != NIL)
        shard_remove_locked(pc, sh, pos);
    pthread_mutex_unlock(&sh->lock);
}

/* ---- page FIFOs and free list (qlock held) --------------------------------- */

static void fifo_push_head(pagecache_t *pc, fifo_t *q, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    p->prev = NIL;
    p->next = q->head;
    if (q->head != NIL)
        pc->pages[q->head].prev = idx;
    else
        q->tail = idx;
    q->head = idx;
    q->count++;
}

static void fifo_unlink(pagecache_t *pc, fifo_t *q, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    if (p->prev != NIL)
        pc->pages[p->prev].next = p->next;
    else
        q->head = p->next;
    if (p->next != NIL)
        pc->pages[p->next].prev = p->prev;
    else
        q->tail = p->prev;
    p->next = p->prev = NIL;
    q->count--;
}

static uint32_t fifo_pop_tail(pagecache_t *pc, fifo_t *q)
{
    uint32_t idx = q->tail;
    if (idx != NIL)
        fifo_unlink(pc, q, idx);
    return idx;
}

/* Take a page out of whatever holds it (a FIFO or the pinned set). */
static void page_detach(pagecache_t *pc, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    if (p->queue == Q_SMALL)
        fifo_unlink(pc, &pc->small, idx);
    else if (p->queue == Q_MAIN)
        fifo_unlink(pc, &pc->main, idx);
    else if (p->queue == Q_PINNED)
        pc->pinned--;
}

/* Put an unkeyed page (out of the hash and the file index) on the free list. */
static void page_free(pagecache_t *pc, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    p->queue = Q_FREE;
    p->pins = 0;
    p->prev = NIL;
    p->fnext = p->fprev = NIL;
    p->next = pc->free_head;
    pc->free_head = idx;
    pc->used--;
}

/* ---- file index (qlock held) ----------------------------------------------- */

static inline uint32_t file_home(const pagecache_t *pc, uint64_t file_id)
{
    return reduce32(fmix64(file_id), pc->file_slot_cap);
}

/* The slot holding file_id's list, or NIL. With *empty non-NULL, a miss
 * stores there the empty slot where the probe ended (where to insert). */
static uint32_t file_find_slot(const pagecache_t *pc, uint64_t file_id,
                               uint32_t *empty)
{
    uint32_t i = file_home(pc, file_id);
    for (;;) {
        uint32_t head = pc->file_slots[i];
        if (head == NIL) {
            if (empty)
                *empty = i;
            return NIL;
        }
        if (pc->pages[head].file_id == file_id)
            return i;
        i = next_slot(i, pc->file_slot_cap);
    }
}

/* Backward-shift deletion, as in the hash shards. */
static void file_delete_at(pagecache_t *pc, uint32_t hole)
{
    uint32_t cap = pc->file_slot_cap;
    uint32_t j = hole;
    for (;;) {
        j = next_slot(j, cap);
        uint32_t head = pc->file_slots[j];
        if (head == NIL)
            break;
        uint32_t home = file_home(pc, pc->pages[head].file_id);
        bool movable = hole <= j ? (home <= hole || home > j)
                                 : (home <= hole && home > j);
        if (movable) {
            pc->file_slots[hole] = head;
            hole = j;
        }
    }
    pc->file_slots[hole] = NIL;
    pc->files--;
}

/* Put a newly keyed page at the head of its file's list. Cannot fail: a
 * file in the table has a keyed page, so at most n_pages files are there and
 * a slot is always empty. */
static void file_link(pagecache_t *pc, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    uint32_t empty = NIL;
    uint32_t pos = file_find_slot(pc, p->file_id, &empty);
    p->fprev = NIL;
    if (pos == NIL) {
        p->fnext = NIL;
        pc->file_slots[empty] = idx;
        pc->files++;
    } else {
        uint32_t head = pc->file_slots[pos];
        p->fnext = head;
        pc->pages[head].fprev = idx;
        pc->file_slots[pos] = idx;
    }
}

/* Take a page that is losing its key off its file's list; O(1), plus one
 * probe of the file table when the page heads the list. */
static void file_unlink(pagecache_t *pc, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    if (p->fprev != NIL) {
        pc->pages[p->fprev].fnext = p->fnext;
        if (p->fnext != NIL)
            pc->pages[p->fnext].fprev = p->fprev;
    } else {
        uint32_t pos = file_find_slot(pc, p->file_id, NULL);
        if (pos != NIL) { /* always, unless the index is corrupt */
            if (p->fnext != NIL) {
                pc->file_slots[pos] = p->fnext;
                pc->pages[p->fnext].fprev = NIL;
            } else {
                file_delete_at(pc, pos);
            }
        }
    }
    p->fnext = p->fprev = NIL;
}

/* ---- ghost FIFO (qlock held) ----------------------------------------------- */

static uint32_t ghost_find_slot(const pagecache_t *pc, uint64_t fp)
{
    uint32_t i = reduce32(fp, pc->ghost_slot_cap);
    for (;;) {
        uint32_t g = pc->ghost_slots[i];
        if (g == NIL)
            return NIL;
        if (pc->ghost_nodes[g].fp == fp)
            return i;
        i = next_slot(i, pc->ghost_slot_cap);
    }
}

static void ghost_delete_at(pagecache_t *pc, uint32_t hole)
{
    uint32_t cap = pc->ghost_slot_cap;
    uint32_t j = hole;
    for (;;) {
        j = next_slot(j, cap);
        uint32_t g = pc->ghost_slots[j];
        if (g == NIL)
            break;
        uint32_t home = reduce32(pc->ghost_nodes[g].fp, cap);
        bool movable = hole <= j ? (home <= hole || home > j)
                                 : (home <= hole && home > j);
        if (movable) {
            pc->ghost_slots[hole] = g;
            hole = j;
        }
    }
    pc->ghost_slots[hole] = NIL;
}

static void ghost_unlink(pagecache_t *pc, uint32_t g)
{
    ghost_node_t *n = &pc->ghost_nodes[g];
    if (n->prev != NIL)
        pc->ghost_nodes[n->prev].next = n->next;
    else
        pc->ghost.head = n->next;
    if (n->next != NIL)
        pc->ghost_nodes[n->next].prev = n->prev;
    else
        pc->ghost.tail = n->prev;
    n->next = pc->ghost_free;
    n->prev = NIL;
    pc->ghost_free = g;
    pc->ghost.count--;
}

/* A ghost hit consumes the entry, as in libcachesim. */
static bool ghost_take(pagecache_t *pc, uint64_t fp)
{
    if (pc->ghost_cap == 0)
        return false;
    uint32_t pos = ghost_find_slot(pc, fp);
    if (pos == NIL)
        return false;
    uint32_t g = pc->ghost_slots[pos];
    ghost_delete_at(pc, pos);
    ghost_unlink(pc, g);
    return true;
}

static void ghost_insert(pagecache_t *pc, uint64_t fp)
{
    if (pc->ghost_cap == 0 || ghost_find_slot(pc, fp) != NIL)
        return;
    while (pc->ghost.count >= pc->ghost_cap) {
        uint32_t old = pc->ghost.tail;
        ghost_delete_at(pc, ghost_find_slot(pc, pc->ghost_nodes[old].fp));
        ghost_unlink(pc, old);
    }
    uint32_t g = pc->ghost_free;
    ghost_node_t *n = &pc->ghost_nodes[g];
    pc->ghost_free = n->next;
    n->fp = fp;
    n->prev = NIL;
    n->next = pc->ghost.head;
    if (pc->ghost.head != NIL)
        pc->ghost_nodes[pc->ghost.head].prev = g;
    else
        pc->ghost.tail = g;
    pc->ghost.head = g;
    pc->ghost.count++;

    uint32_t i = reduce32(fp, pc->ghost_slot_cap);
    while (pc->ghost_slots[i] != NIL)
        i = next_slot(i, pc->ghost_slot_cap);
    pc->ghost_slots[i] = g;
}

/* ---- S3-FIFO eviction (qlock held) ------------------------------------------ */

static void evict_small(pagecache_t *pc)
{
    uint32_t idx;
    while ((idx = fifo_pop_tail(pc, &pc->small)) != NIL) {
        page_desc_t *p = &pc->pages[idx];
        uint8_t f = atomic_load_explicit(&p->freq, memory_order_relaxed);
        if (f >= pc->threshold) {
            /* Reused while on probation: to main, counting afresh there. */
            atomic_store_explicit(&p->freq, 0, memory_order_relaxed);
            p->queue = Q_MAIN;
            fifo_push_head(pc, &pc->main, idx);
            continue;
        }
        uint64_t fp = key_hash(p->file_id, p->page);
        hash_remove(pc, idx);
        file_unlink(pc, idx);
        page_free(pc, idx);
        pc->evictions++;
        ghost_insert(pc, fp);
        return;
    }
}

static void evict_main(pagecache_t *pc)
{
    uint64_t budget = 4 * (uint64_t)pc->main.count + 1;
    uint32_t idx;
    while ((idx = fifo_pop_tail(pc, &pc->main)) != NIL) {
        page_desc_t *p = &pc->pages[idx];
        uint8_t f = atomic_load_explicit(&p->freq, memory_order_relaxed);
        if (f >= 1 && budget-- > 0) {
            atomic_store_explicit(&p->freq, (uint8_t)((f > 3 ? 3 : f) - 1),
                                  memory_order_relaxed);
            fifo_push_head(pc, &pc->main, idx);
            continue;
        }
        hash_remove(pc, idx);
        file_unlink(pc, idx);
        page_free(pc, idx);
        pc->evictions++;
        return;
    }
}

static int evict_one(pagecache_t *pc)
{
    if (pc->small.count == 0 && pc->main.count == 0)
        return -EBUSY;
    pc->has_evicted = true;
    if (pc->main.count > pc->main_cap || pc->small.count == 0)
        evict_main(pc);
    else
        evict_small(pc); /* may only move pages to main; the caller loops */
    return 0;
}

/* ---- pins (qlock and the page's shard lock held) ----------------------------- */

static int pin_locked(pagecache_t *pc, uint32_t idx)
{
    page_desc_t *p = &pc->pages[idx];
    if (p->pins == UINT16_MAX)
        return -EOVERFLOW;
    if (p->pins == 0) {
        page_detach(pc, idx);
        p->queue = Q_PINNED;
        pc->pinned++;
    }
    p->pins++;
    return 0;
}

/* ---- public API --------------------------------------------------------------- */

void pagecache_config_default(pagecache_config_t *cfg)
{
    if (cfg == NULL)
        return;
    cfg->policy = PAGECACHE_POLICY_S3FIFO;
    cfg->small_ratio = 0.1;
    cfg->ghost_ratio = 0.9;
    cfg->move_to_main_threshold = 2;
}

void pagecache_destroy(pagecache_t *pc)
{
    if (pc == NULL)
        return;
    if (pc->shards != NULL) {
        for (uint32_t i = 0; i < pc->n_shards; i++)
            pthread_mutex_destroy(&pc->shards[i].lock);
    }
    if (pc->qlock_ready)
        pthread_mutex_destroy(&pc->qlock);
    free(pc->arena);
    free(pc->pages);
    free(pc->shards);
    free(pc->slot_mem);
    free(pc->ghost_nodes);
    free(pc->ghost_slots);
    free(pc->file_slots);
    free(pc);
}

/* aligned_alloc wants a size that is a multiple of the alignment. */
static void *alloc_aligned(size_t align, size_t size)
{
    size_t rounded = (size + align - 1) / align * align;
    return aligned_alloc(align, rounded == 0 ? align : rounded);
}

int pagecache_create(pagecache_t **out, uint64_t capacity_bytes,
                     uint32_t page_size, const pagecache_config_t *cfg)
{
    pagecache_config_t defaults;
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (cfg == NULL) {
        pagecache_config_default(&defaults);
        cfg = &defaults;
    }
    if (page_size < PAGECACHE_MIN_PAGE_SIZE ||
        page_size > PAGECACHE_MAX_PAGE_SIZE ||
        (page_size & (page_size - 1)) != 0)
        return -EINVAL;
    if (cfg->policy != PAGECACHE_POLICY_S3FIFO &&
        cfg->policy != PAGECACHE_POLICY_CLOCK)
        return -EINVAL;
    /* Written so that NaN fails too. */
    if (!(cfg->small_ratio > 0.0 && cfg->small_ratio < 1.0) ||
        !(cfg->ghost_ratio >= 0.0 && cfg->ghost_ratio <= 1.0))
        return -EINVAL;
    if (cfg->move_to_main_threshold < 1 || cfg->move_to_main_threshold > 3)
        return -EINVAL; /* a 2-bit counter cannot count further */
    uint64_t n = capacity_bytes / page_size;
    if (n == 0 || n >= NIL || n > SIZE_MAX / page_size)
        return -EINVAL;

    pagecache_t *pc = calloc(1, sizeof(*pc));
    if (pc == NULL)
        return -ENOMEM;
    pc->page_size = page_size;
    pc->n_pages = (uint32_t)n;
    pc->threshold = cfg->move_to_main_threshold;
    pc->policy = cfg->policy;
    if (pc->policy == PAGECACHE_POLICY_CLOCK) {
        /* CLOCK is the main FIFO alone with a 1-bit counter: no small FIFO,
         * no ghost (and no ghost memory). */
        pc->max_freq = 1;
        pc->small_cap = 0;
        pc->main_cap = pc->n_pages;
        pc->ghost_cap = 0;
    } else {
        pc->max_freq = 3;
        /* Same double arithmetic as libcachesim, so the queue sizes agree. */
        pc->small_cap = (uint32_t)((double)n * cfg->small_ratio);
        if (pc->small_cap == 0)
            pc->small_cap = 1;
        pc->main_cap = pc->n_pages - pc->small_cap;
        pc->ghost_cap = (uint32_t)((double)n * cfg->ghost_ratio);
    }

    while (pc->shard_bits < MAX_SHARD_BITS &&
           (n >> (pc->shard_bits + 1)) >= MIN_PAGES_PER_SHARD)
        pc->shard_bits++;
    pc->n_shards = 1u << pc->shard_bits;
    /* One shard: room for every page. Several: 2.125x the mean load plus
     * 16, which a balanced hash exceeds with probability below e^-35 per
     * shard at the smallest shards (64 pages); an exceeded shard fails that
     * put with -ENOMEM rather than corrupting anything. Small caches get
     * stripes too: a 64 KiB page is copied under its stripe's lock, and two
     * threads should rarely meet on one. */
    uint64_t per_shard = (n + pc->n_shards - 1) / pc->n_shards;
    uint64_t shard_cap = pc->n_shards == 1 ? 2 * n + 1
                                           : 2 * per_shard + per_shard / 8 + 16;
    uint64_t total_slots = shard_cap * pc->n_shards;
    /* The ghost is probed on puts only (the miss path), mostly without a
     * match; a 2/3 load keeps those probes within a cache line or two and
     * saves 2 bytes a page over 1/2. */
    pc->ghost_slot_cap = pc->ghost_cap ? pc->ghost_cap + pc->ghost_cap / 2 + 1 : 0;
    /* At most n files have a keyed page: at a 2/3 load a miss (the common
     * case: a first open) probes a cache line or two. n < NIL, so this fits. */
    pc->file_slot_cap = (uint32_t)(n + n / 2 + 1);

    pc->arena = alloc_aligned(ARENA_ALIGN, (size_t)n * page_size);
    pc->pages = calloc(n, sizeof(page_desc_t));
    pc->shards = alloc_aligned(CACHE_LINE, pc->n_shards * sizeof(shard_t));
    pc->slot_mem = malloc(total_slots * sizeof(uint32_t));
    if (pc->ghost_cap) {
        pc->ghost_nodes = calloc(pc->ghost_cap, sizeof(ghost_node_t));
        pc->ghost_slots = malloc(pc->ghost_slot_cap * sizeof(uint32_t));
    }
    pc->file_slots = malloc((size_t)pc->file_slot_cap * sizeof(uint32_t));
    if (pc->arena == NULL || pc->pages == NULL || pc->shards == NULL ||
        pc->slot_mem == NULL || pc->file_slots == NULL ||
        (pc->ghost_cap && (pc->ghost_nodes == NULL || pc->ghost_slots == NULL))) {
        pc->n_shards = 0; /* no mutex to destroy yet */
        pagecache_destroy(pc);
        return -ENOMEM;
    }
    memset(pc->slot_mem, 0xff, total_slots * sizeof(uint32_t)); /* NIL */
    memset(pc->shards, 0, pc->n_shards * sizeof(shard_t));
    if (pc->ghost_cap)
        memset(pc->ghost_slots, 0xff, pc->ghost_slot_cap * sizeof(uint32_t));
    memset(pc->file_slots, 0xff, (size_t)pc->file_slot_cap * sizeof(uint32_t));

    for (uint32_t i = 0; i < pc->n_pages; i++) {
        page_desc_t *p = &pc->pages[i];
        atomic_init(&p->freq, 0);
        p->queue = Q_FREE;
        p->prev = NIL;
        p->fnext = p->fprev = NIL;
        p->next = i + 1 < pc->n_pages ? i + 1 : NIL;
    }
    pc->free_head = 0;
    for (uint32_t g = 0; g < pc->ghost_cap; g++) {
        pc->ghost_nodes[g].prev = NIL;
        pc->ghost_nodes[g].next = g + 1 < pc->ghost_cap ? g + 1 : NIL;
    }
    pc->ghost_free = pc->ghost_cap ? 0 : NIL;
    pc->small = pc->main = pc->ghost = (fifo_t){NIL, NIL, 0};
    atomic_init(&pc->not_admitted, 0);
    atomic_init(&pc->bytes_used, 0);

    uint32_t initialised = 0;
    int rc = pthread_mutex_init(&pc->qlock, NULL);
    pc->qlock_ready = rc == 0;
    for (; rc == 0 && initialised < pc->n_shards; initialised++) {
        shard_t *sh = &pc->shards[initialised];
        sh->slots = pc->slot_mem + (size_t)initialised * shard_cap;
        sh->cap = (uint32_t)shard_cap;
        rc = pthread_mutex_init(&sh->lock, NULL);
        if (rc != 0)
            break;
    }
    if (rc != 0) {
        pc->n_shards = initialised;
        pagecache_destroy(pc);
        return -rc;
    }

    pc->meta_bytes = sizeof(*pc) + n * sizeof(page_desc_t) +
                     pc->n_shards * sizeof(shard_t) +
                     total_slots * sizeof(uint32_t) +
                     (uint64_t)pc->ghost_cap * sizeof(ghost_node_t) +
                     (uint64_t)pc->ghost_slot_cap * sizeof(uint32_t) +
                     (uint64_t)pc->file_slot_cap * sizeof(uint32_t);
    *out = pc;
    return 0;
}

/* Find a page and copy it out under its shard lock; the hit path. */
static int64_t lookup_copy(pagecache_t *pc, uint64_t file_id, uint64_t page,
                           void *buf, size_t buflen, bool count,
                           bool count_miss)
{
    uint64_t h = key_hash(file_id, page);
    shard_t *sh = shard_for(pc, h);
    pthread_mutex_lock(&sh->lock);
    uint32_t pos = shard_find_slot(pc, sh, h, file_id, page);
    if (pos == NIL) {
        if (count_miss)
            sh->misses++;
        pthread_mutex_unlock(&sh->lock);
        return -ENOENT;
    }
    uint32_t idx = sh->slots[pos];
    page_desc_t *p = &pc->pages[idx];
    uint32_t len = p->len;
    if (len > buflen) {
        pthread_mutex_unlock(&sh->lock);
        return -ENOBUFS;
    }
    memcpy(buf, pc->arena + (size_t)idx * pc->page_size, len);
    if (count) {
        uint8_t f = atomic_load_explicit(&p->freq, memory_order_relaxed);
        if (f < pc->max_freq)
            atomic_store_explicit(&p->freq, (uint8_t)(f + 1),
                                  memory_order_relaxed);
        sh->hits++;
    }
    pthread_mutex_unlock(&sh->lock);
    return len;
}

int64_t pagecache_get(pagecache_t *pc, uint64_t file_id, uint64_t page,
                      void *buf, size_t buflen)
{
    if (pc == NULL || buf == NULL)
        return -EINVAL;
    return lookup_copy(pc, file_id, page, buf, buflen, true, true);
}

int64_t pagecache_get_range(pagecache_t *pc, uint64_t file_id, uint64_t first,
                            void *buf, size_t buflen)
{
    if (pc == NULL || buf == NULL)
        return -EINVAL;
    unsigned char *out = buf;
    size_t done = 0;
    for (uint64_t page = first; done < buflen; page++) {
        /* Only the page where a read stops for lack of data is a miss. */
        int64_t n = lookup_copy(pc, file_id, page, out + done, buflen - done,
                                true, true);
        if (n < 0)
            break;
        done += (size_t)n;
        if ((uint64_t)n < pc->page_size || page == UINT64_MAX)
            break;
    }
    return (int64_t)done;
}

int64_t pagecache_peek(pagecache_t *pc, uint64_t file_id, uint64_t page,
                       void *buf, size_t buflen)
{
    if (pc == NULL || buf == NULL)
        return -EINVAL;
    return lookup_copy(pc, file_id, page, buf, buflen, false, false);
}

int pagecache_contains(pagecache_t *pc, uint64_t file_id, uint64_t page)
{
    if (pc == NULL)
        return -EINVAL;
    uint64_t h = key_hash(file_id, page);
    shard_t *sh = shard_for(pc, h);
    pthread_mutex_lock(&sh->lock);
    int found = shard_find_slot(pc, sh, h, file_id, page) != NIL;
    pthread_mutex_unlock(&sh->lock);
    return found;
}

int pagecache_put(pagecache_t *pc, uint64_t file_id, uint64_t page,
                  const void *data, size_t len, int hint)
{
    if (pc == NULL || data == NULL || len == 0 || len > pc->page_size)
        return -EINVAL;
    if (hint != PAGECACHE_HINT_NORMAL && hint != PAGECACHE_HINT_DONT_ADMIT &&
        hint != PAGECACHE_HINT_PIN)
        return -EINVAL;
    if (hint == PAGECACHE_HINT_DONT_ADMIT) {
        atomic_fetch_add_explicit(&pc->not_admitted, 1, memory_order_relaxed);
        return 0;
    }
    uint64_t h = key_hash(file_id, page);
    shard_t *sh = shard_for(pc, h);
    int rc = 0;

    pthread_mutex_lock(&pc->qlock);
    pthread_mutex_lock(&sh->lock);
    uint32_t pos = shard_find_slot(pc, sh, h, file_id, page);
    if (pos != NIL) {
        /* Overwrite in place: readers copy under this same lock. */
        uint32_t idx = sh->slots[pos];
        page_desc_t *p = &pc->pages[idx];
        memcpy(pc->arena + (size_t)idx * pc->page_size, data, len);
        atomic_fetch_add_explicit(&pc->bytes_used, len, memory_order_relaxed);
        atomic_fetch_sub_explicit(&pc->bytes_used, p->len, memory_order_relaxed);
        p->len = (uint32_t)len;
        pc->updates++;
        if (hint == PAGECACHE_HINT_PIN)
            rc = pin_locked(pc, idx);
        pthread_mutex_unlock(&sh->lock);
        pthread_mutex_unlock(&pc->qlock);
        return rc;
    }
    pthread_mutex_unlock(&sh->lock);

    /* Same order as libcachesim: consume the ghost entry, evict, insert. */
    bool ghost_hit = ghost_take(pc, h);
    if (ghost_hit)
        pc->ghost_hits++;
    while (pc->used + 1 > pc->n_pages) {
        rc = evict_one(pc);
        if (rc != 0) {
            pc->busy++;
            pthread_mutex_unlock(&pc->qlock);
            return rc;
        }
    }
    uint8_t target;
    if (pc->policy == PAGECACHE_POLICY_CLOCK || ghost_hit)
        target = Q_MAIN;
    else if (!pc->has_evicted && pc->small.count >= pc->small_cap)
        target = Q_MAIN;
    else
        target = Q_SMALL;
    uint32_t idx = pc->free_head;
    page_desc_t *p = &pc->pages[idx];
    pc->free_head = p->next;
    p->next = NIL;
    p->queue = Q_RESERVED;
    pc->used++;
    /* A reserved page is in no table or queue: nobody else can touch it, so
     * a large page is copied with qlock released. A small copy is cheaper
     * than handing qlock back and forth once more: with two threads filling
     * 4 KiB misses, one hold per put measured 1.0-1.2x the one-thread rate
     * against 0.5-0.7x for two holds. */
    bool copy_unlocked = len > UNLOCKED_COPY_MIN;
    if (copy_unlocked)
        pthread_mutex_unlock(&pc->qlock);
    memcpy(pc->arena + (size_t)idx * pc->page_size, data, len);
    p->len = (uint32_t)len;
    if (copy_unlocked)
        pthread_mutex_lock(&pc->qlock);
    pthread_mutex_lock(&sh->lock);
    if (shard_find_slot(pc, sh, h, file_id, page) != NIL) {
        /* Another thread stored this page meanwhile; its copy stands. */
        page_free(pc, idx);
        pc->updates++;
        if (hint == PAGECACHE_HINT_PIN)
            rc = pin_locked(pc, sh->slots[shard_find_slot(pc, sh, h, file_id,
                                                          page)]);
    } else {
        p->file_id = file_id;
        p->page = page;
        p->pins = 0;
        atomic_store_explicit(&p->freq, 0, memory_order_relaxed);
        rc = shard_insert(sh, h, idx);
        if (rc != 0) {
            page_free(pc, idx);
        } else {
            atomic_fetch_add_explicit(&pc->bytes_used, len,
                                      memory_order_relaxed);
            p->queue = target;
            fifo_push_head(pc, target == Q_MAIN ? &pc->main : &pc->small, idx);
            file_link(pc, idx);
            pc->insertions++;
            if (hint == PAGECACHE_HINT_PIN)
                rc = pin_locked(pc, idx);
        }
    }
    pthread_mutex_unlock(&sh->lock);
    pthread_mutex_unlock(&pc->qlock);
    return rc;
}

/* Run fn on a cached page with qlock and its shard lock held. */
static int with_page(pagecache_t *pc, uint64_t file_id, uint64_t page,
                     int (*fn)(pagecache_t *, shard_t *, uint32_t, void *),
                     void *arg)
{
    if (pc == NULL)
        return -EINVAL;
    uint64_t h = key_hash(file_id, page);
    shard_t *sh = shard_for(pc, h);
    pthread_mutex_lock(&pc->qlock);
    pthread_mutex_lock(&sh->lock);
    uint32_t pos = shard_find_slot(pc, sh, h, file_id, page);
    int rc = pos == NIL ? -ENOENT : fn(pc, sh, pos, arg);
    pthread_mutex_unlock(&sh->lock);
    pthread_mutex_unlock(&pc->qlock);
    return rc;
}

static int do_pin(pagecache_t *pc, shard_t *sh, uint32_t pos, void *arg)
{
    (void)arg;
    return pin_locked(pc, sh->slots[pos]);
}

static int do_unpin(pagecache_t *pc, shard_t *sh, uint32_t pos, void *arg)
{
    (void)arg;
    uint32_t idx = sh->slots[pos];
    page_desc_t *p = &pc->pages[idx];
    if (p->pins == 0)
        return -EINVAL;
    if (--p->pins == 0) {
        pc->pinned--;
        p->queue = Q_MAIN;
        fifo_push_head(pc, &pc->main, idx);
    }
    return 0;
}

static int do_invalidate(pagecache_t *pc, shard_t *sh, uint32_t pos, void *arg)
{
    (void)arg;
    uint32_t idx = sh->slots[pos];
    shard_remove_locked(pc, sh, pos);
    file_unlink(pc, idx);
    page_detach(pc, idx);
    page_free(pc, idx);
    pc->invalidations++;
    return 1;
}

typedef struct debug_out {
    int *queue;
    int *freq;
    int *pins;
} debug_out_t;

static int do_debug(pagecache_t *pc, shard_t *sh, uint32_t pos, void *arg)
{
    const debug_out_t *o = arg;
    const page_desc_t *p = &pc->pages[sh->slots[pos]];
    if (o->queue)
        *o->queue = p->queue;
    if (o->freq)
        *o->freq = atomic_load_explicit(&p->freq, memory_order_relaxed);
    if (o->pins)
        *o->pins = p->pins;
    return 0;
}

int pagecache_pin(pagecache_t *pc, uint64_t file_id, uint64_t page)
{
    return with_page(pc, file_id, page, do_pin, NULL);
}

int pagecache_unpin(pagecache_t *pc, uint64_t file_id, uint64_t page)
{
    return with_page(pc, file_id, page, do_unpin, NULL);
}

int pagecache_debug_entry(pagecache_t *pc, uint64_t file_id, uint64_t page,
                          int *queue, int *freq, int *pins)
{
    debug_out_t o = {queue, freq, pins};
    return with_page(pc, file_id, page, do_debug, &o);
}

int64_t pagecache_invalidate_page(pagecache_t *pc, uint64_t file_id,
                                  uint64_t page)
{
    int rc = with_page(pc, file_id, page, do_invalidate, NULL);
    return rc == -ENOENT ? 0 : rc;
}

/* Drop a keyed page found through its file's list; qlock held. */
static void invalidate_listed(pagecache_t *pc, uint32_t idx)
{
    hash_remove(pc, idx);
    page_detach(pc, idx);
    page_free(pc, idx);
    pc->invalidations++;
}

int64_t pagecache_invalidate_range(pagecache_t *pc, uint64_t file_id,
                                   uint64_t first, uint64_t end)
{
    if (pc == NULL || end < first)
        return -EINVAL;
    if (end == first)
        return 0;
    int64_t dropped = 0;
    pthread_mutex_lock(&pc->qlock);
    uint32_t pos = file_find_slot(pc, file_id, NULL);
    if (pos == NIL) {
        /* No page of this file: nothing to probe. */
    } else if (end - first > pc->n_pages) {
        /* Wider than the cache: the file's list is the shorter walk. */
        uint32_t idx = pc->file_slots[pos];
        while (idx != NIL) {
            page_desc_t *p = &pc->pages[idx];
            uint32_t next = p->fnext;
            if (p->page >= first && p->page < end) {
                file_unlink(pc, idx);
                invalidate_listed(pc, idx);
                dropped++;
            }
            idx = next;
        }
    } else {
        for (uint64_t page = first; page < end; page++) {
            uint64_t h = key_hash(file_id, page);
            shard_t *sh = shard_for(pc, h);
            pthread_mutex_lock(&sh->lock);
            uint32_t spos = shard_find_slot(pc, sh, h, file_id, page);
            if (spos != NIL)
                dropped += do_invalidate(pc, sh, spos, NULL);
            pthread_mutex_unlock(&sh->lock);
        }
    }
    pthread_mutex_unlock(&pc->qlock);
    return dropped;
}

int64_t pagecache_invalidate_file(pagecache_t *pc, uint64_t file_id)
{
    if (pc == NULL)
        return -EINVAL;
    int64_t dropped = 0;
    pthread_mutex_lock(&pc->qlock);
    uint32_t pos = file_find_slot(pc, file_id, NULL);
    if (pos != NIL) {
        /* Take the whole list out of the table at once, then free it. */
        uint32_t idx = pc->file_slots[pos];
        file_delete_at(pc, pos);
        while (idx != NIL) {
            page_desc_t *p = &pc->pages[idx];
            uint32_t next = p->fnext;
            p->fnext = p->fprev = NIL;
            invalidate_listed(pc, idx);
            dropped++;
            idx = next;
        }
    }
    pthread_mutex_unlock(&pc->qlock);
    return dropped;
}

int pagecache_debug_in_ghost(pagecache_t *pc, uint64_t file_id, uint64_t page)
{
    if (pc == NULL)
        return -EINVAL;
    pthread_mutex_lock(&pc->qlock);
    int in = pc->ghost_cap && ghost_find_slot(pc, key_hash(file_id, page)) != NIL;
    pthread_mutex_unlock(&pc->qlock);
    return in;
}

/* ---- consistency check (test hook) ------------------------------------------- */

#define EXPECT(cond)                                                           \
    do {                                                                       \
        if (!(cond))                                                           \
            return -EIO;                                                       \
    } while (0)

static bool is_keyed(const page_desc_t *p)
{
    return p->queue == Q_SMALL || p->queue == Q_MAIN || p->queue == Q_PINNED;
}

static int check_fifo(const pagecache_t *pc, const fifo_t *q, uint8_t queue)
{
    uint32_t n = 0, prev = NIL;
    for (uint32_t i = q->head; i != NIL; i = pc->pages[i].next) {
        EXPECT(i < pc->n_pages && n < pc->n_pages);
        const page_desc_t *p = &pc->pages[i];
        EXPECT(p->queue == queue && p->prev == prev && p->pins == 0);
        prev = i;
        n++;
    }
    EXPECT(q->tail == prev && q->count == n);
    return 0;
}

/* Everything qlock guards, plus the hash; qlock held, shard locks taken one
 * at a time. Reserved pages are skipped but for their state: their owner
 * writes their length with no lock held. */
static int check_locked(pagecache_t *pc)
{
    uint32_t n = pc->n_pages, keyed = 0, pinned = 0, reserved = 0, free_ = 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        const page_desc_t *p = &pc->pages[i];
        if (is_keyed(p)) {
            keyed++;
            EXPECT(p->len >= 1 && p->len <= pc->page_size);
            EXPECT((p->queue == Q_PINNED) == (p->pins > 0));
            pinned += p->queue == Q_PINNED;
            bytes += p->len;
        } else {
            EXPECT(p->queue == Q_FREE || p->queue == Q_RESERVED);
            EXPECT(p->fnext == NIL && p->fprev == NIL);
            reserved += p->queue == Q_RESERVED;
            free_ += p->queue == Q_FREE;
        }
    }
    EXPECT(pinned == pc->pinned && keyed + reserved == pc->used);
    EXPECT(bytes == atomic_load_explicit(&pc->bytes_used, memory_order_relaxed));

    /* The free list holds exactly the free pages. */
    uint32_t listed = 0;
    for (uint32_t i = pc->free_head; i != NIL; i = pc->pages[i].next) {
        EXPECT(i < n && listed < free_ && pc->pages[i].queue == Q_FREE);
        listed++;
    }
    EXPECT(listed == free_ && free_ + pc->used == n);

    /* The queues hold exactly the unpinned keyed pages. */
    int rc = check_fifo(pc, &pc->small, Q_SMALL);
    if (rc == 0)
        rc = check_fifo(pc, &pc->main, Q_MAIN);
    if (rc != 0)
        return rc;
    EXPECT(pc->small.count + pc->main.count + pinned == keyed);

    /* The hash finds every keyed page and holds nothing else. */
    uint64_t in_hash = 0;
    for (uint32_t s = 0; s < pc->n_shards; s++) {
        pthread_mutex_lock(&pc->shards[s].lock);
        in_hash += pc->shards[s].count;
        pthread_mutex_unlock(&pc->shards[s].lock);
    }
    EXPECT(in_hash == keyed);
    for (uint32_t i = 0; i < n; i++) {
        const page_desc_t *p = &pc->pages[i];
        if (!is_keyed(p))
            continue;
        uint64_t h = key_hash(p->file_id, p->page);
        shard_t *sh = shard_for(pc, h);
        pthread_mutex_lock(&sh->lock);
        uint32_t pos = shard_find_slot(pc, sh, h, p->file_id, p->page);
        bool found = pos != NIL && sh->slots[pos] == i;
        pthread_mutex_unlock(&sh->lock);
        EXPECT(found);
    }

    /* The file index: one reachable slot per file with a keyed page, whose
     * list holds exactly that file's keyed pages. Together with the count
     * this puts every keyed page on exactly one list. */
    uint32_t files = 0;
    listed = 0;
    for (uint32_t s = 0; s < pc->file_slot_cap; s++) {
        uint32_t head = pc->file_slots[s];
        if (head == NIL)
            continue;
        files++;
        EXPECT(head < n);
        uint64_t file_id = pc->pages[head].file_id;
        EXPECT(file_find_slot(pc, file_id, NULL) == s);
        uint32_t prev = NIL;
        for (uint32_t i = head; i != NIL; i = pc->pages[i].fnext) {
            EXPECT(i < n && listed < keyed);
            const page_desc_t *p = &pc->pages[i];
            EXPECT(is_keyed(p) && p->file_id == file_id && p->fprev == prev);
            prev = i;
            listed++;
        }
    }
    EXPECT(files == pc->files && listed == keyed && files <= n);
    EXPECT(files < pc->file_slot_cap); /* a probe always ends */

    /* The ghost: its FIFO and its table agree. */
    uint32_t ghosts = 0, gprev = NIL;
    for (uint32_t g = pc->ghost.head; g != NIL; g = pc->ghost_nodes[g].next) {
        EXPECT(g < pc->ghost_cap && ghosts < pc->ghost_cap);
        EXPECT(pc->ghost_nodes[g].prev == gprev);
        uint32_t pos = ghost_find_slot(pc, pc->ghost_nodes[g].fp);
        EXPECT(pos != NIL && pc->ghost_slots[pos] == g);
        gprev = g;
        ghosts++;
    }
    EXPECT(pc->ghost.tail == gprev && pc->ghost.count == ghosts);
    return 0;
}

#undef EXPECT

int pagecache_debug_check(pagecache_t *pc)
{
    if (pc == NULL)
        return -EINVAL;
    pthread_mutex_lock(&pc->qlock);
    int rc = check_locked(pc);
    pthread_mutex_unlock(&pc->qlock);
    return rc;
}

int pagecache_stats(pagecache_t *pc, pagecache_stats_t *out)
{
    if (pc == NULL || out == NULL)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&pc->qlock);
    out->insertions = pc->insertions;
    out->updates = pc->updates;
    out->evictions = pc->evictions;
    out->ghost_hits = pc->ghost_hits;
    out->invalidations = pc->invalidations;
    out->busy = pc->busy;
    out->pages_used = pc->used;
    out->pinned_pages = pc->pinned;
    out->small_pages = pc->small.count;
    out->main_pages = pc->main.count;
    out->ghost_entries = pc->ghost.count;
    for (uint32_t i = 0; i < pc->n_shards; i++) {
        shard_t *sh = &pc->shards[i];
        pthread_mutex_lock(&sh->lock);
        out->hits += sh->hits;
        out->misses += sh->misses;
        pthread_mutex_unlock(&sh->lock);
    }
    out->bytes_used = atomic_load_explicit(&pc->bytes_used, memory_order_relaxed);
    pthread_mutex_unlock(&pc->qlock);
    out->not_admitted =
        atomic_load_explicit(&pc->not_admitted, memory_order_relaxed);
    out->capacity_pages = pc->n_pages;
    out->page_size = pc->page_size;
    out->shards = pc->n_shards;
    return 0;
}

uint64_t pagecache_meta_bytes(const pagecache_t *pc)
{
    return pc == NULL ? 0 : pc->meta_bytes;
}

double pagecache_meta_bytes_per_page(double ghost_ratio)
{
    /* 2.125 hash slots per page (the sharded table's sizing), 1.5 file
     * slots, and ghost_ratio ghost entries with 1.5 slots each. */
    return (double)sizeof(page_desc_t) + 2.125 * sizeof(uint32_t) +
           1.5 * sizeof(uint32_t) +
           ghost_ratio * ((double)sizeof(ghost_node_t) + 1.5 * sizeof(uint32_t));
}

void pagecache_struct_sizes(size_t *page_desc, size_t *ghost_node,
                            size_t *hash_slot)
{
    if (page_desc)
        *page_desc = sizeof(page_desc_t);
    if (ghost_node)
        *ghost_node = sizeof(ghost_node_t);
    if (hash_slot)
        *hash_slot = sizeof(uint32_t);
}

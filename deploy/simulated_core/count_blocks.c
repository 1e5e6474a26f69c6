/* A qemu-user TCG plugin (plugin API version 1, qemu 7.2+): how often each translated block runs
 * between two marker system calls of the guest, with the block's instruction bytes.
 *
 *   qemu-aarch64 -plugin count_blocks.so,out=FILE[,caches=BYTES:WAYS/BYTES:WAYS[/...]] ...
 *
 * The guest marks the region to count with getpid() called with extra arguments (getpid ignores
 * them, so the marker changes nothing of the guest): MARK_MAGIC, 1 to start and MARK_MAGIC, 0, N to
 * stop. At the stop, FILE (N = 0) or FILE.N (N > 0: one process counts several regions, e.g. the
 * candidate kernels of a tuning batch) gets one line per block that ran in the region:
 *   <guest address hex> <executions> <instruction bytes hex>
 * Counting is an inline add per block execution (no callback), so it costs little; counts are exact
 * for one guest thread (the inline add is not atomic across threads, so guests run one thread).
 *
 * With caches=..., every data access also goes through a simulated hierarchy of set-associative,
 * write-back, write-allocate caches with LRU replacement and 64-byte lines (listed from the L1 data
 * cache out; a level is looked up only on a miss of the one before, and a dirty victim is written
 * into the next level), and each line gets, per level, the lines filled into it (an L1 fill is an L1
 * miss; the last level's fills come from memory), then the dirty lines the last level wrote back:
 *   <address> <executions> <bytes> <fills of level 1> ... <fills of level N> <write-backs to memory>
 * The hierarchy runs from the guest's first marker (MARK_MAGIC, 2: warm the caches, count nothing)
 * or start marker on, so a counted region starts with the caches as the inference before left them.
 * There is no prefetcher, and no instruction fetch: data accesses only.
 *
 * Debian does not ship qemu-plugin.h: the few declarations below are the documented API's.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS = 0 };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_R = 1, QEMU_PLUGIN_MEM_W, QEMU_PLUGIN_MEM_RW };
typedef uint32_t qemu_plugin_meminfo_t;
typedef void (*qemu_plugin_vcpu_mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr,
                                          void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_mem_cb_t cb,
                                      enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw, void *userdata);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t info);
_Bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t info);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MARK_SYSCALL 172 /* getpid on aarch64 */
#define MARK_MAGIC 0x6d6e7632u /* "mnv2" */
#define LINE_SHIFT 6                /* 64-byte lines, every Cortex-A's */
#define MAX_LEVELS 4

/* One level of the simulated hierarchy: sets of `ways` lines, each way's tag, age (LRU) and dirty bit. */
struct level {
    uint64_t sets, ways;
    uint64_t *tags; /* tag + 1; 0 = empty */
    uint64_t *ages;
    unsigned char *dirty;
};

static struct level levels[MAX_LEVELS];
static int n_levels;
static uint64_t clock_tick;
static int simulating;

/* What a block's accesses cost beyond L1 hits: fills of each level, and the last level's write-backs. */
struct traffic {
    uint64_t fills[MAX_LEVELS];
    uint64_t writebacks;
};

struct block {
    uint64_t vaddr;
    uint64_t executions; /* inline-incremented by the translated code */
    uint64_t at_start;   /* executions when the region began */
    struct traffic traffic, traffic_at_start;
    size_t n_bytes;
    unsigned char *bytes;
};

/* Looks a line up at `at` and below: fills it where it misses (LRU victim), and counts the fills and
 * the dirty victims the last level writes back. A dirty victim of an inner level is written into
 * the next level (as a store there, which may miss and fill it too). */
static void access_line(int at, uint64_t line, int store, struct traffic *t)
{
    struct level *lv = &levels[at];
    uint64_t set = line % lv->sets, *tags = lv->tags + set * lv->ways, *ages = lv->ages + set * lv->ways;
    unsigned char *dirty = lv->dirty + set * lv->ways;
    uint64_t victim = 0;
    clock_tick++;
    for (uint64_t w = 0; w < lv->ways; w++) {
        if (tags[w] == line + 1) {
            ages[w] = clock_tick;
            dirty[w] |= store;
            return;
        }
        if (ages[w] < ages[victim])
            victim = w;
    }
    t->fills[at]++;
    if (tags[victim] && dirty[victim]) {
        if (at + 1 < n_levels)
            access_line(at + 1, tags[victim] - 1, 1, t);
        else
            t->writebacks++;
    }
    if (at + 1 < n_levels)
        access_line(at + 1, line, 0, t);
    tags[victim] = line + 1;
    ages[victim] = clock_tick;
    dirty[victim] = store;
}

static void on_memory(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata)
{
    if (!simulating)
        return;
    struct block *b = userdata;
    uint64_t size = 1ull << qemu_plugin_mem_size_shift(info);
    int store = qemu_plugin_mem_is_store(info);
    for (uint64_t line = vaddr >> LINE_SHIFT; line <= (vaddr + size - 1) >> LINE_SHIFT; line++)
        access_line(0, line, store, &b->traffic);
}

static int parse_caches(const char *spec)
{
    while (*spec && n_levels < MAX_LEVELS) {
        char *end;
        uint64_t bytes = strtoull(spec, &end, 10), ways = 0;
        if (*end == ':')
            ways = strtoull(end + 1, &end, 10);
        if (!bytes || !ways || bytes % (ways << LINE_SHIFT) || (*end && *end != '/'))
            return -1;
        struct level *lv = &levels[n_levels++];
        lv->ways = ways;
        lv->sets = bytes / (ways << LINE_SHIFT);
        lv->tags = calloc(lv->sets * ways, sizeof *lv->tags);
        lv->ages = calloc(lv->sets * ways, sizeof *lv->ages);
        lv->dirty = calloc(lv->sets * ways, 1);
        spec = *end ? end + 1 : end;
    }
    return *spec ? -1 : 0;
}

/* Blocks are never freed or moved: translated code holds a pointer to each one's counter. A block
 * translated again (after a flush) gets a new record; the output adds records of equal bytes. */
static struct block **blocks;
static size_t n_blocks, cap_blocks;
static char *out_path;
static int counting;

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    size_t n = qemu_plugin_tb_n_insns(tb), total = 0;
    for (size_t i = 0; i < n; i++)
        total += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, i));
    struct block *b = calloc(1, sizeof *b);
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->bytes = malloc(total ? total : 1);
    for (size_t i = 0, at = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        size_t size = qemu_plugin_insn_size(insn);
        memcpy(b->bytes + at, qemu_plugin_insn_data(insn), size);
        at += size;
    }
    b->n_bytes = total;
    if (n_blocks == cap_blocks) {
        cap_blocks = cap_blocks ? 2 * cap_blocks : 4096;
        blocks = realloc(blocks, cap_blocks * sizeof *blocks);
    }
    blocks[n_blocks++] = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
    if (n_levels)
        for (size_t i = 0; i < n; i++)
            qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), on_memory, QEMU_PLUGIN_CB_NO_REGS,
                                             QEMU_PLUGIN_MEM_RW, b);
}

static void write_region(uint64_t region)
{
    char path[4096];
    if (region)
        snprintf(path, sizeof path, "%s.%llu", out_path, (unsigned long long)region);
    else
        snprintf(path, sizeof path, "%s", out_path);
    FILE *out = fopen(path, "w");
    if (!out) {
        fprintf(stderr, "count_blocks: cannot write %s\n", path);
        return;
    }
    for (size_t i = 0; i < n_blocks; i++) {
        struct block *b = blocks[i];
        uint64_t ran = b->executions - b->at_start;
        if (!ran)
            continue;
        fprintf(out, "%llx %llu ", (unsigned long long)b->vaddr, (unsigned long long)ran);
        for (size_t j = 0; j < b->n_bytes; j++)
            fprintf(out, "%02x", b->bytes[j]);
        for (int l = 0; l < n_levels; l++)
            fprintf(out, " %llu", (unsigned long long)(b->traffic.fills[l] - b->traffic_at_start.fills[l]));
        if (n_levels)
            fprintf(out, " %llu", (unsigned long long)(b->traffic.writebacks - b->traffic_at_start.writebacks));
        fputc('\n', out);
    }
    fclose(out);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num != MARK_SYSCALL || a1 != MARK_MAGIC)
        return;
    if (a2 == 2) {
        simulating = n_levels > 0;
    } else if (a2 == 1) {
        for (size_t i = 0; i < n_blocks; i++) {
            blocks[i]->at_start = blocks[i]->executions;
            blocks[i]->traffic_at_start = blocks[i]->traffic;
        }
        counting = 1;
        simulating = n_levels > 0;
    } else if (a2 == 0 && counting) {
        write_region(a3);
        counting = 0;
    }
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc,
                                                               char **argv)
{
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0)
            out_path = strdup(argv[i] + 4);
        else if (strncmp(argv[i], "caches=", 7) == 0 && parse_caches(argv[i] + 7) != 0) {
            fprintf(stderr, "count_blocks: caches=BYTES:WAYS[/BYTES:WAYS...], each a whole number of 64-byte sets\n");
            return -1;
        }
    if (!out_path) {
        fprintf(stderr, "count_blocks: needs out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}

/* A qemu-user TCG plugin (plugin API version 1, qemu 7.2+): how often each translated block runs
 * between two marker system calls of the guest, with the block's instruction bytes.
 *
 *   qemu-aarch64 -plugin count_blocks.so,out=FILE ...
 *
 * The guest marks the region to count with getpid() called with extra arguments (getpid ignores
 * them, so the marker changes nothing of the guest): MARK_MAGIC, 1 to start and MARK_MAGIC, 0, N to
 * stop. At the stop, FILE (N = 0) or FILE.N (N > 0: one process counts several regions, e.g. the
 * candidate kernels of a tuning batch) gets one line per block that ran in the region:
 *   <guest address hex> <executions> <instruction bytes hex>
 * Counting is an inline add per block execution (no callback), so it costs little; counts are exact
 * for one guest thread (the inline add is not atomic across threads, so guests run one thread).
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

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define MARK_SYSCALL 172 /* getpid on aarch64 */
#define MARK_MAGIC 0x6d6e7632u /* "mnv2" */

struct block {
    uint64_t vaddr;
    uint64_t executions; /* inline-incremented by the translated code */
    uint64_t at_start;   /* executions when the region began */
    size_t n_bytes;
    unsigned char *bytes;
};

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
        fputc('\n', out);
    }
    fclose(out);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8)
{
    if (num != MARK_SYSCALL || a1 != MARK_MAGIC)
        return;
    if (a2 == 1) {
        for (size_t i = 0; i < n_blocks; i++)
            blocks[i]->at_start = blocks[i]->executions;
        counting = 1;
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
    if (!out_path) {
        fprintf(stderr, "count_blocks: needs out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    return 0;
}

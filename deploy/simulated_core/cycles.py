"""What each executed block is and costs: its instructions (LLVM's disassembler), their classes, and
its cycles on a core from LLVM's scheduling model (llvm-mca), cached per block and core.

llvm-mca runs each block as a loop of 100 iterations and reports cycles per iteration: the
steady-state throughput of an out-of-order (or, for the A55, in-order) pipeline with every load
hitting the L1 cache. Calls (`bl`, `blr`) are left out of a block's estimate: llvm-mca models them
as a 100-cycle latency, not the cost of the branch itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess

from mnv2_edge.compile.paths import CACHE_ROOT
from mnv2_edge.targets.errors import UserError, last_line

LLVM_MC, LLVM_MCA = "llvm-mc-19", "llvm-mca-19"  # Debian 12's llvm-19: its Neoverse N1 model (the A76's)
DISASSEMBLY_FEATURES = "+v8.4a,+dotprod,+fullfp16,+i8mm,+bf16,+crc,+lse,+rcpc,+aes,+sha2"
ITERATIONS = 100
CACHE = CACHE_ROOT / "simulated_core" / "cycles"

CLASSES = ("multiply(-add)", "SIMD other", "SIMD load/store", "load/store", "branch", "scalar")
# Multiplies too: the first product of a sum is often an fmul, not an fmla.
_MULTIPLY_ADD = re.compile(r"^(fmul|fmla|fmls|fmadd|fmsub|fnmadd|fnmsub|sdot|udot|usdot|sudot|smmla|ummla|usmmla|"
                           r"[su]mlal2?|[su]mlsl2?|mla|mls|sqrdmlah|bfdot|bfmmla)$")
_BRANCH = re.compile(r"^(b|b\..*|bl|blr|br|ret|cbz|cbnz|tbz|tbnz)$")
_CALL = re.compile(r"^(bl|blr)\s")
_LOAD_STORE = re.compile(r"^(ld|st|prfm)")
_SIMD_REGISTER = re.compile(r"\b(v\d+|q\d+|d\d+|s\d+|h\d+|b\d+)\b")


def instruction_class(text: str) -> str:
    mnemonic, _, operands = text.partition(" ")
    if _MULTIPLY_ADD.match(mnemonic):
        return "multiply(-add)"
    if _BRANCH.match(mnemonic):
        return "branch"
    simd = bool(_SIMD_REGISTER.search(operands))
    if _LOAD_STORE.match(mnemonic):
        return "SIMD load/store" if simd else "load/store"
    return "SIMD other" if simd else "scalar"


def _tool(name: str) -> str:
    if not shutil.which(name):
        raise UserError(f"The simulated core needs {name} (Debian's llvm-19; the README's set-up installs it).")
    return name


def disassemble(codes: list[bytes]) -> list[list[str]]:
    """Each block's instructions as LLVM assembly, in one call of the disassembler."""
    words = [code[i:i + 4] for code in codes for i in range(0, len(code), 4)]
    text = "\n".join(" ".join(f"0x{byte:02x}" for byte in word) for word in words)
    done = subprocess.run([_tool(LLVM_MC), "--disassemble", "-triple=aarch64", f"-mattr={DISASSEMBLY_FEATURES}"],
                          input=text, capture_output=True, text=True)
    lines = [" ".join(line.split()) for line in done.stdout.splitlines()
             if line.startswith("\t") and not line.strip().startswith(".")]
    if done.returncode != 0 or len(lines) != len(words):
        raise UserError(f"Disassembling the executed blocks failed ({len(lines)} of {len(words)} instructions "
                        f"read): {last_line(done.stderr)}")
    blocks, at = [], 0
    for code in codes:
        blocks.append(lines[at:at + len(code) // 4])
        at += len(code) // 4
    return blocks


def _key(mcpu: str, instructions: list[str]) -> str:
    return hashlib.sha256((mcpu + "\n" + "\n".join(instructions)).encode()).hexdigest()[:24]


def _mca(mcpu: str, mattr: str, blocks: list[list[str]]) -> list[float]:
    """Cycles per execution of each block, from one llvm-mca run over all of them as code regions.
    Instructions the model has no data for (the A76's LSE atomics in libc's locks) are skipped; a
    block left with none is costed at one cycle an instruction."""
    source = []
    for index, instructions in enumerate(blocks):
        kept = [text for text in instructions if not _CALL.match(text + " ")] or ["nop"]
        source += [f"# LLVM-MCA-BEGIN b{index}", *kept, "# LLVM-MCA-END"]
    done = subprocess.run([_tool(LLVM_MCA), "-mtriple=aarch64", f"-mcpu={mcpu}", f"-mattr={mattr}",
                           f"-iterations={ITERATIONS}", "-skip-unsupported-instructions=lack-sched",
                           "-all-views=false", "-summary-view", "-"],
                          input="\n".join(source) + "\n", capture_output=True, text=True)
    found = {int(index): int(total) / ITERATIONS for index, total in
             re.findall(r"^\[\d+\] Code Region - b(\d+)\n(?:.*\n)*?Total Cycles:\s+(\d+)", done.stdout, re.M)}
    if done.returncode != 0 or not found:
        raise UserError(f"llvm-mca -mcpu={mcpu} could not estimate the executed blocks: {last_line(done.stderr)}")
    return [found.get(index, float(len(instructions))) for index, instructions in enumerate(blocks)]


def block_cycles(mcpu: str, mattr: str, blocks: list[list[str]]) -> list[float]:
    """Cycles per execution of each block on `mcpu`; blocks seen before (any model) come from the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{mcpu}{mattr}.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    keys = [_key(mcpu, instructions) for instructions in blocks]
    todo = sorted({key: i for i, key in enumerate(keys) if key not in known}.items())
    if todo:
        for (key, _), cycles in zip(todo, _mca(mcpu, mattr, [blocks[i] for _, i in todo])):
            known[key] = cycles
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(known))
        partial.replace(path)
    return [known[key] for key in keys]

"""Seeded fuzzing of the front end with structurally valid TFLite files, as a user's files would come.

    python benchmarks/fuzz_frontend.py [--mutants 300] [--seed 0] [--timeout 180] [--out dist/fuzz]

Each mutant is a generated MobileNetV2 (0.35/96, float32 or int8) with one change: an op's options
(stride, padding, activation, dilation, depth multiplier), a tensor's shape or type, a constant's
bytes, an operator's code, or the subgraph's wiring. Each is fed to the command a user runs,
`python deploy/check.py --model FILE` (build here, check against LiteRT), with a time limit, and LiteRT is asked
separately (in a child process) whether it accepts the file. Outcomes:

  verified      built, and the outputs match LiteRT (exit 0)
  refused       exit 2 with a one-paragraph `error:` message and no traceback
  MISMATCH      built, but the outputs differ from LiteRT (exit 1)      -- a defect
  BUG           exit 3, or a traceback                                   -- a defect
  CRASH / HANG  killed by a signal, or over the time limit               -- a defect

Prints the counts, and every defect with its mutation, so it can be replayed (--only N).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

import numpy as np

from mnv2_edge.compile.cli_common import require_at_least, run_main
from mnv2_edge.compile.generation.generate import build_graph
from mnv2_edge.compile.generation.tflite_writer import Graph, serialize
from mnv2_edge.compile.generation.variants import Variant

DEFECTS = ("MISMATCH", "BUG", "CRASH", "HANG")
OTHER_OPS = ("ADD", "MUL", "RELU", "MEAN", "SOFTMAX", "CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D",
             "FULLY_CONNECTED", "RESHAPE", "LOGISTIC")
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64", "int16")


@dataclass
class Mutant:
    index: int
    base: str  # float32 or int8
    mutation: str  # what was changed, to read and replay
    data: bytes


def _options_mutation(graph: Graph, rng) -> str:
    ops = [op for op in graph.operators if op.options]
    op = ops[rng.integers(len(ops))]
    key = sorted(op.options)[rng.integers(len(op.options))]
    value = int(rng.choice([0, 1, 2, 3, 5, 7, 9, 127, -1]))
    op.options[key] = value
    return f"{op.op}.{key} = {value}"


def _shape_mutation(graph: Graph, rng) -> str:
    index = int(rng.integers(len(graph.tensors)))
    tensor = graph.tensors[index]
    shape = list(tensor.shape)
    if shape and rng.random() < 0.7:
        axis = int(rng.integers(len(shape)))
        shape[axis] = int(rng.choice([0, 1, 2, 3, shape[axis] + 1, shape[axis] * 2]))
    else:
        shape = shape[:-1] if len(shape) > 1 and rng.random() < 0.5 else shape + [1]
    if tensor.data is not None and int(np.prod(shape)) == tensor.data.size:
        tensor.data = tensor.data.reshape(shape)
    elif tensor.data is not None:  # keep the bytes, so the file is no longer self-consistent
        tensor.data = tensor.data.ravel()
    tensor.shape = tuple(shape)
    return f"tensor {index} ({tensor.name}) shape -> {shape}"


def _type_mutation(graph: Graph, rng) -> str:
    index = int(rng.integers(len(graph.tensors)))
    tensor = graph.tensors[index]
    dtype = str(rng.choice([d for d in DTYPES if d != tensor.dtype]))
    if tensor.data is not None:
        tensor.data = tensor.data.astype(dtype)
    tensor.dtype = dtype
    return f"tensor {index} ({tensor.name}) type -> {dtype}"


def _bytes_mutation(graph: Graph, rng) -> str:
    constants = [i for i, t in enumerate(graph.tensors) if t.data is not None and t.data.size > 1]
    index = constants[rng.integers(len(constants))]
    tensor = graph.tensors[index]
    flat = tensor.data.ravel().copy()
    how = rng.integers(3)
    if how == 0:  # fewer values than the shape says
        tensor.data = flat[: flat.size // 2]
        return f"tensor {index} ({tensor.name}) data cut to {flat.size // 2} of {flat.size} values"
    if how == 1 and np.issubdtype(flat.dtype, np.floating):
        flat[rng.integers(flat.size)] = rng.choice([np.nan, np.inf, -np.inf, 1e30])
        tensor.data = flat.reshape(tensor.data.shape)
        return f"tensor {index} ({tensor.name}) one value -> non-finite or huge"
    tensor.data = rng.permutation(flat).reshape(tensor.data.shape)
    return f"tensor {index} ({tensor.name}) values shuffled"


def _code_mutation(graph: Graph, rng) -> str:
    position = int(rng.integers(len(graph.operators)))
    op = graph.operators[position]
    new = str(rng.choice([name for name in OTHER_OPS if name != op.op]))
    old, op.op = op.op, new
    return f"operator {position} {old} -> {new}"


def _wiring_mutation(graph: Graph, rng) -> str:
    position = int(rng.integers(len(graph.operators)))
    op = graph.operators[position]
    target = int(rng.integers(-1, len(graph.tensors)))
    if rng.random() < 0.7 and op.inputs:
        slot = int(rng.integers(len(op.inputs)))
        op.inputs[slot] = target
        return f"operator {position} ({op.op}) input {slot} -> tensor {target}"
    if rng.random() < 0.5:
        graph.outputs = [max(target, 0)]
        return f"model output -> tensor {max(target, 0)}"
    op.outputs = [max(target, 0)]
    return f"operator {position} ({op.op}) output -> tensor {max(target, 0)}"


MUTATIONS = (_options_mutation, _shape_mutation, _type_mutation, _bytes_mutation, _code_mutation,
             _wiring_mutation)


def mutants(count: int, seed: int = 0):
    """`count` seeded mutants, alternating float32 and int8 bases, each with one mutation."""
    bases = {dtype: build_graph(Variant(0.35, 96), dtype) for dtype in ("float32", "int8")}
    rng = np.random.default_rng(seed)
    for index in range(count):
        base = ("float32", "int8")[index % 2]
        graph = copy.deepcopy(bases[base])
        mutate = MUTATIONS[index % len(MUTATIONS) if index < len(MUTATIONS) * 2 else rng.integers(len(MUTATIONS))]
        mutation = mutate(graph, rng)
        try:
            data = serialize(graph)
        except Exception as err:  # noqa: BLE001 - the writer itself refuses: no file to test
            data = b""
            mutation += f" (not serializable: {type(err).__name__})"
        yield Mutant(index, base, mutation, data)


LITERT_PROBE = (
    "import sys, numpy as np\n"
    "from ai_edge_litert.interpreter import Interpreter\n"
    "it = Interpreter(model_path=sys.argv[1]); it.allocate_tensors()\n"
    "for d in it.get_input_details(): it.set_tensor(d['index'], np.zeros(d['shape'], d['dtype']))\n"
    "it.invoke(); print('accepted')\n"
)


def litert_accepts(path: Path, timeout: float) -> bool:
    try:
        done = subprocess.run([sys.executable, "-c", LITERT_PROBE, str(path)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and "accepted" in done.stdout


def judge(path: Path, out: Path, timeout: float) -> tuple[str, str]:
    """(outcome, detail) of the user's command on this file."""
    try:
        done = subprocess.run([sys.executable, "deploy/check.py", "--model", str(path), "--no-tuning",
                               "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "HANG", f"no answer in {timeout:.0f} s"
    err = done.stderr.strip()
    if "Traceback" in err:
        return "BUG", err.splitlines()[-1]
    if done.returncode == 0:  # the [check] line: the worst error and LiteRT's own
        return "verified", next((line.split(": OK: ", 1)[-1] for line in done.stdout.splitlines()
                                 if line.startswith("[check]")), "")
    if done.returncode == 2 and "\nerror: " in "\n" + err:
        return "refused", err[err.index("error: "):][:300]
    if done.returncode == 1:
        return "MISMATCH", done.stdout.strip().splitlines()[-1][:300]
    if done.returncode < 0:
        return "CRASH", f"signal {-done.returncode}"
    return "BUG", f"exit {done.returncode}: {err[-300:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=180, help="seconds per file for the build (a hang beyond)")
    parser.add_argument("--only", type=int, help="replay mutant N alone")
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "fuzz")
    args = parser.parse_args()
    require_at_least(("--mutants", args.mutants, 1), ("--timeout", args.timeout, 1), ("--only", args.only, 0))
    args.out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    litert_counts: dict[str, int] = {}
    defects = []
    started = time.monotonic()
    for mutant in mutants(args.mutants, args.seed):
        if args.only is not None and mutant.index != args.only:
            continue
        path = args.out / f"mutant_{mutant.index:04d}_{mutant.base}.tflite"
        path.write_bytes(mutant.data)
        accepted = bool(mutant.data) and litert_accepts(path, args.timeout)
        outcome, detail = judge(path, args.out / "built", args.timeout)
        counts[outcome] = counts.get(outcome, 0) + 1
        key = f"{outcome} ({'LiteRT accepts' if accepted else 'LiteRT refuses'})"
        litert_counts[key] = litert_counts.get(key, 0) + 1
        if outcome in DEFECTS:
            defects.append({"index": mutant.index, "base": mutant.base, "mutation": mutant.mutation,
                            "outcome": outcome, "detail": detail})
        done = mutant.index + 1
        eta = (time.monotonic() - started) / done * (args.mutants - done)
        print(f"[{done}/{args.mutants}] {mutant.base}: {mutant.mutation}: {outcome}"
              + (f" ({detail[:120]})" if detail else "") + f"  ETA {eta / 60:.0f} min", flush=True)
        path.unlink()
    print("\n" + json.dumps({"mutants": sum(counts.values()), "outcomes": counts, "with_litert": litert_counts,
                             "defects": defects, "minutes": round((time.monotonic() - started) / 60, 1)},
                            indent=2))
    return 1 if defects else 0


if __name__ == "__main__":
    run_main(main)

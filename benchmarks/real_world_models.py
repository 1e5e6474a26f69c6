"""TFLite models made elsewhere, built and verified on this machine as a user would: a table.

    python benchmarks/real_world_models.py [--timeout 600] [--only NAME]

The files: every .tflite inside the MediaPipe 0.10.14 wheel (Google's face, hand, pose, iris and
segmentation networks: several outputs, sparse weights, float16 weights, custom layouts), fetched
once from PyPI with `pip download` into .cache/real-world/, and the trained MobileNetV2 of
../shared/models (TensorFlow 2.21's converter: float32, float16, int8, uint8 I/O). Each goes through
`python deploy/check.py --model FILE --no-tuning` (build here, check against LiteRT) in a child process with a
time limit, and LiteRT is asked separately whether it runs the file. Prints a Markdown table:
outcome (verified / refused with the reason / a defect) and the worst error against the float64
forward pass beside LiteRT's own (see deploy/verify.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from fuzz_frontend import judge, litert_accepts

from mnv2_edge.compile.cli_common import require_at_least, run_main
from mnv2_edge.compile.frontend.tflite_file import describe
from mnv2_edge.compile.paths import CACHE_ROOT

WHEEL = "mediapipe==0.10.14"
FOLDER = CACHE_ROOT / "real-world"


def mediapipe_models() -> list[Path]:
    """The .tflite files of the MediaPipe wheel, extracted once."""
    out = FOLDER / WHEEL.replace("==", "-")
    if not any(out.glob("*.tflite")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(FOLDER), WHEEL], check=True)
        wheel = next(FOLDER.glob("mediapipe-*.whl"))
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.endswith(".tflite"):
                    (out / Path(member).name).write_bytes(archive.read(member))
    return sorted(out.glob("*.tflite"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per file (a hang beyond)")
    parser.add_argument("--only", help="files whose name contains this")
    args = parser.parse_args()
    require_at_least(("--timeout", args.timeout, 1))
    shared = ROOT.parent / "shared" / "models"
    files = [(p, "MediaPipe 0.10.14") for p in mediapipe_models()]
    files += [(p, "TF 2.21 converter") for p in sorted(shared.glob("*.tflite"))]
    files = [(p, source) for p, source in files if not args.only or args.only in p.name]
    out = FOLDER / "built"
    print("| file | made by | size | ops | inputs -> outputs | LiteRT runs it | ours | detail |")
    print("|---|---|---|---|---|---|---|---|")
    counts: dict[str, int] = {}
    for path, source in files:
        try:
            info = describe(path)
            ops = ", ".join(sorted(info.ops, key=info.ops.get, reverse=True)[:4]) + (" ..." if len(info.ops) > 4 else "")
            shape = f"{len(info.inputs)} -> {len(info.outputs)}"
        except Exception as err:  # noqa: BLE001 - the table reports it
            ops, shape = f"({type(err).__name__})", "?"
        accepted = litert_accepts(path, args.timeout)
        outcome, detail = judge(path, out, args.timeout)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"| {path.name} | {source} | {path.stat().st_size / 1e6:.2f} MB | {ops} | {shape} | "
              f"{'yes' if accepted else 'no'} | {outcome} | {detail.replace('|', '/')[:240]} |", flush=True)
    print("\n" + ", ".join(f"{outcome}: {n}" for outcome, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    run_main(main)

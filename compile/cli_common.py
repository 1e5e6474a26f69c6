"""What every command line here shares: bad input becomes a message and exit code 2, a bug of
ours exit code 3 with what to report."""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

from mnv2_edge.targets.errors import UserError, last_line


def run_main(main) -> None:
    """Run main(); print a UserError as one paragraph and exit 2; Ctrl-C exits 130."""
    # Progress lines reach a pipe (tee, a log, a test waiting on an event) as they are printed,
    # not 8 KB later.
    sys.stdout.reconfigure(line_buffering=True)
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.exit(0)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; run the same command again to resume.", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - anything else is ours to fix, not the user's
        log = Path(tempfile.gettempdir()) / "mnv2-edge-error.log"
        log.write_text(" ".join(sys.argv) + "\n\n" + traceback.format_exc())
        print(f"internal error: {type(err).__name__}: {last_line(err, '')}. "
              f"This is a bug in mnv2-edge, not a problem with your input: please report it with the "
              f"command you ran and the traceback saved in {log}.", file=sys.stderr)
        sys.exit(3)


def require_at_least(*flags: tuple[str, float | None, float]) -> None:
    """(flag, value, least) each: a UserError naming the first numeric flag below its least (None: not given)."""
    for flag, value, least in flags:
        if value is not None and value < least:
            raise UserError(f"{flag} takes a number of at least {least:g}, not {value:g}.")


def parse_host_port(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"{flag} takes host:port (for example 127.0.0.1:9190), not {text!r}.")
    return host, int(port)


def parse_range(text: str, flag: str) -> tuple[float, float]:
    """"LO,HI" -> (lo, hi) with lo < hi."""
    try:
        lo, hi = (float(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes two numbers LO,HI (for example -1,1 or 0,1), not {text!r}.") from None
    if not lo < hi:
        raise UserError(f"{flag} {text}: LO must be below HI (for example -1,1 or 0,1).")
    return lo, hi


def parse_variants(text: str) -> list[tuple[float, int]]:
    """--variants WIDTH/RESOLUTION,... (the benchmarks'): the pairs, each checked as a variant."""
    from mnv2_edge.compile.generation.variants import Variant

    specs = []
    for spec in text.split(","):
        width, _, res = spec.partition("/")
        try:
            variant = Variant(float(width), int(res))
        except ValueError:
            raise UserError(f"--variants takes WIDTH/RESOLUTION pairs, comma-separated (for example "
                            f"1.0/224,0.35/96), not {spec!r}.") from None
        specs.append((variant.width, variant.resolution))
    return specs


def _listed(kind, what: str):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, not {text!r}") from None
    return parse


def add_model_flags(parser: argparse.ArgumentParser, default_target: str) -> None:
    """--target and the flags that choose models, the same in build, tune and bench."""
    parser.add_argument("--target", default=default_target, help=f"device profile in targets/ (default: {default_target})")
    what = parser.add_argument_group("models (the same flags in build, tune and bench)")
    what.add_argument("--width", "--widths", dest="widths", type=_listed(float, "numbers"), default=[1.0],
                      help="width multipliers 0.35-1.4, comma-separated (default 1.0)")
    what.add_argument("--res", "--resolution", "--resolutions", dest="resolutions", type=_listed(int, "whole numbers"),
                      default=[224], help="input resolutions 96-224, comma-separated (default 224)")
    what.add_argument("--dtype", "--dtypes", dest="dtypes", type=_listed(str, "names"), default=["float32"],
                      help="float32, int8 or float32,int8 (default float32)")
    what.add_argument("--all-official", "--all-variants", dest="all_official", action="store_true",
                      help="the 22 published variants (the paper's Table 3) instead of widths x resolutions")
    what.add_argument("--expansion", type=int, default=6, metavar="T",
                      help="generated variants: the bottlenecks' expansion factor, 5-10 (default 6, Table 2's)")
    what.add_argument("--classes", type=int, default=1000, metavar="N",
                      help="generated variants: classes of the classifier (default 1000)")
    what.add_argument("--model", dest="models", type=Path, action="append", default=[], metavar="FILE.tflite",
                      help="this TFLite file instead of the variants (repeat for several)")
    what.add_argument("--tuning-log", type=Path, help="MetaSchedule database folder (default: tuning_logs/<target>/, "
                      "for host tuning_logs/host/<CPU class>/)")
    what.add_argument("--out", type=Path, help="artifact folder: dist/<target>/<model>/ (default: dist/)")


def add_rpc_flags(group, what: str, session_timeout: int) -> None:
    """--rpc-tracker, --rpc-key and --session-timeout, the same in every command that reaches a board
    through a tracker (bench, classify, tune); `what` says what the board does there."""
    group.add_argument("--rpc-tracker", metavar="HOST:PORT", help=f"TVM RPC tracker of the board that {what}")
    group.add_argument("--rpc-key", help="tracker key of the device (default: the profile's rpc_key)")
    group.add_argument("--session-timeout", type=int, default=session_timeout,
                       help=f"seconds the device's RPC server keeps one session before dropping it (TVM's "
                            f"session_timeout; default {session_timeout})")


def add_lowering_flags(parser: argparse.ArgumentParser, no_tuning: bool = True) -> None:
    """--int8-lowering (and --no-tuning), the same in every command that builds models."""
    parser.add_argument("--int8-lowering", default="integer", choices=("integer", "float"),
                        help="quantized models: integer kernels (default; bit-exact with TFLite's reference "
                             "kernels) or float (TVM's dequantize -> float op -> quantize)")
    if no_tuning:
        parser.add_argument("--no-tuning", action="store_true",
                            help="ignore tuning databases (every kernel gets its default schedule)")


def model_selection(args):
    """The ModelSelection the flags of add_model_flags chose."""
    from mnv2_edge.compile.artifacts.pipeline import ModelSelection

    return ModelSelection(widths=args.widths, resolutions=args.resolutions, dtypes=args.dtypes,
                          all_official=args.all_official, models=args.models, expansion=args.expansion,
                          classes=args.classes)

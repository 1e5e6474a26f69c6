"""What every command line here shares: bad input becomes a message and exit code 2, a bug of
ours exit code 3 with what to report."""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

from compile.errors import UserError


def run_main(main) -> None:
    """Run main(); print a UserError as one paragraph and exit 2; Ctrl-C exits 130."""
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
        print(f"internal error: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}. "
              f"This is a bug in mnv2-edge, not a problem with your input: please report it with the "
              f"command you ran and the traceback saved in {log}.", file=sys.stderr)
        sys.exit(3)


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

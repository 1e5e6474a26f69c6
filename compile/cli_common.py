"""What every command line here shares: bad input becomes a message and exit code 2."""

from __future__ import annotations

import sys


def run_main(main) -> None:
    """Run main(); print a UserError as one paragraph and exit 2; Ctrl-C exits 130."""
    from compile.errors import UserError

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

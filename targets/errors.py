"""The one error type the command lines turn into a clear message and exit code 2.

At the bottom of the import graph (it imports nothing), so every part raises it: the device
profiles here, compile/ and deploy/ above them."""


def last_line(message, default: str = "no message") -> str:
    """The last non-blank line of an error or a tool's output: where TVM, pip and compilers put
    what went wrong, under their tracebacks and logs."""
    lines = [line for line in str(message).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else default


class UserError(Exception):
    """A problem with what the user asked for or supplied: bad file, bad flag, missing tool.

    The message is one paragraph that names the problem and says what to do; the CLIs print it
    without a traceback and exit with code 2.
    """

    exit_code = 2

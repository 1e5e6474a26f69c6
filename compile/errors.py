"""The one error type the command lines turn into a clear message and exit code 2."""


class UserError(Exception):
    """A problem with what the user asked for or supplied: bad file, bad flag, missing tool.

    The message is one paragraph that names the problem and says what to do; the CLIs print it
    without a traceback and exit with code 2.
    """

    exit_code = 2

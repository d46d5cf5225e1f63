"""The `xlb` command, in four parts that import one way (parser -> commands -> options,
render): `parser` declares every flag once; `commands` runs each subcommand; `options` turns
flag values into the configs the other packages take, with a clear error for a bad one;
`render` prints the model and the lab for people. Each command imports what it needs from
the rest of controlplane when it runs, so that `xlb model` needs neither bcc nor root."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    from ..datapath import BccMissing
    from ..datapath.programs import DatapathError
    from ..lab.topology import LabError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BccMissing, DatapathError, LabError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`xlb model | head`): stop quietly, as other Unix tools do;
        # stdout is pointed at /dev/null so that the interpreter's final flush cannot raise
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool the pipe stopped

"""``python -m propagate.report OUT [--data-root PATH]``: (re)write ``OUT/report/index.html``
for the finished run or sweep in ``OUT`` (:func:`propagate.report.write_report`)."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from corr.errors import run_command

from . import write_report


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m propagate.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the --out folder of a finished evaluate.py run or sweep")
    parser.add_argument("--data-root", default=None,
                        help="the dataset, where it is no longer where the run read it")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    path = run_command(lambda: write_report(args.out, args.data_root), args.debug, "python -m propagate.report")
    print(f"report: {path}")


if __name__ == "__main__":
    main()

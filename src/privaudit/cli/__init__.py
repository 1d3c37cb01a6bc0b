"""The `privaudit` command line: a thin layer that parses, calls the library and maps errors to exit codes.

Exit codes: 0 success; 1 unexpected failure; 2 bad input (usage errors and the
library's ``ValueError``s, printed as one line without a traceback); 3 an audit
that FAILs (issue 5).
"""

from ._main import main as main

__all__ = ["main"]

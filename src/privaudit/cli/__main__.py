"""`python -m privaudit.cli ...`: the `privaudit` command (so that `torchrun -m privaudit.cli train ...` works)."""

from ._main import main

if __name__ == "__main__":
    main(prog_name="privaudit")

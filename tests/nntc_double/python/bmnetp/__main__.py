"""`python3 -m bmnetp --model=... --shapes=[[...]] ...` (test double)."""
import sys

from _nntc_double.bmnetp_tool import cli_main

sys.exit(cli_main(sys.argv[1:]))

"""`python3 -m bmneto --model=<m.onnx> --shapes=[[...]] ...` (test double)."""
import sys

from _nntc_double.bmnetp_tool import cli_main

sys.exit(cli_main(sys.argv[1:], tool="bmneto"))

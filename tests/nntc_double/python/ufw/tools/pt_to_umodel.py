"""`python3 -m ufw.tools.pt_to_umodel -m <traced.pt> -s "(N,C,H,W)" -d <outdir> -D <lmdb> [-n name] [--cmp]`."""
import sys

from _nntc_double.pt_to_umodel_tool import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

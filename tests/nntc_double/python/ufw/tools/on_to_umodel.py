"""`python3 -m ufw.tools.on_to_umodel -m <m.onnx> -s "(N,C,H,W)" -d <outdir> -D <lmdb> [-n name] [--cmp]`."""
import sys

from _nntc_double.pt_to_umodel_tool import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], tool="on_to_umodel"))

"""bmnetu TEST DOUBLE (tests/nntc_double/README.md). The command is tests/nntc_double/bin/bmnetu."""
from _nntc_double import VERSION as __version__


def compile(*, model, weight, outdir, prec="FP32", shapes=None, net_name=None, opt=2, dyn=False, cmp=True):
    """bmnetu.md's Python form. Defaults as documented there: prec FP32, opt 2 (the CLI's -opt
    default is 1: the doc says so in two places), dyn False, cmp True; the target is BM1684.
    Raises RuntimeError (DoubleError) where the CLI would exit non-zero."""
    from _nntc_double.bmnetu_tool import api_compile
    api_compile(dict(model=model, weight=weight, outdir=outdir, prec=prec, shapes=shapes,
                     net_name=net_name, opt=opt, dyn=dyn, cmp=cmp))

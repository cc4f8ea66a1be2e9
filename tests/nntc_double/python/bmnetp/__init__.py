"""bmnetp TEST DOUBLE (tests/nntc_double/README.md): validates like NNTC's bmnetp, writes fake outputs."""
from _nntc_double import VERSION as __version__


def compile(*, model, outdir, target, shapes, net_name, opt=1, dyn=False, cmp=True, enable_profile=False):
    """bmnetp.md's Python form. Defaults as documented (opt 1, dyn False, cmp True, enable_profile False).
    Raises RuntimeError (DoubleError) where the CLI would exit non-zero."""
    from _nntc_double.bmnetp_tool import api_compile
    api_compile(dict(model=model, outdir=outdir, target=target, shapes=shapes, net_name=net_name,
                     opt=opt, dyn=dyn, cmp=cmp, enable_profile=enable_profile))

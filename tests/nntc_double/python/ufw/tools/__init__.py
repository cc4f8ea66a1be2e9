"""ufw.tools double: `tools.pt_to_umodel([...argv...])` as in the SDK examples."""


def pt_to_umodel(argv):
    """Same arguments as `python3 -m ufw.tools.pt_to_umodel`; raises SystemExit(code) on failure."""
    from _nntc_double.pt_to_umodel_tool import main
    code = main(list(argv), api=True)
    if code:
        raise SystemExit(code)

"""ufw TEST DOUBLE (tests/nntc_double/README.md): only ufw.tools.pt_to_umodel is modelled."""
from _nntc_double import VERSION as __version__

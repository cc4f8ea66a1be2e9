from bmbuild.cli import main

raise SystemExit(main())

from umld.cli import main

raise SystemExit(main())

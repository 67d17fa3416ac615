from hospitalnet.cli import main

raise SystemExit(main())

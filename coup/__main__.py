from coup.cli import main

raise SystemExit(main())

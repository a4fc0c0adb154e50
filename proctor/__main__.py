from proctor.cli import main

raise SystemExit(main())

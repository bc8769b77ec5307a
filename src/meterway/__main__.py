from meterway.cli.main import main

raise SystemExit(main())

from backup_agent.cli import main

raise SystemExit(main())

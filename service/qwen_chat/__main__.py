from qwen_chat.cli import main

raise SystemExit(main())

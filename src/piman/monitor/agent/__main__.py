"""``python -m piman.monitor.agent``: the agent without the CLI's imports (what systemd runs)."""

import sys

from piman.monitor.agent.run import main

sys.exit(main())

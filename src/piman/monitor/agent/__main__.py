"""``python -m piman.monitor.agent``: the agent without the CLI's imports (what systemd runs)."""

import sys

from piman.monitor.agent.app import main

sys.exit(main())

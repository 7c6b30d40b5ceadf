"""monitor.agent."""

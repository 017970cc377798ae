"""The node runtime: each node's directory layout, the agent that runs its programs, and the launchers."""

"""The Batch service's domain: pools, nodes, jobs and tasks, their state machines, and how they run."""

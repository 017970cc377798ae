"""Pool autoscale: the formula language, the sampled metrics, and the periodic evaluation."""

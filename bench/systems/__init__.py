"""One module per system: how to start a 3-member cluster of it, and a per-task session that
performs the figures' operations through that system's own client API."""

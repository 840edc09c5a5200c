"""Every HTTP route a worker serves: table views and operator actions, the ops page, webhook
ingress, trace, health and metrics."""

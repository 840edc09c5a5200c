"""Faust agents: thin loops that read a topic, consult tables, call pure rules, and send."""

"""The lab: a whole cluster in network namespaces on one machine, with real traffic."""

"""The lab: a whole cluster in network namespaces on one machine, with real traffic. It plays
the API server and the controllers for its agents (lab, admission), keeps what it built
(state), builds the namespaces and links (topology), starts and watches processes
(processes), runs real servers in pods (podserver) and tours what it built (demo,
scenarios).

May import: model, sources, l2, datapath (for an agent's maps and the LAN's xdp_pass, never
bcc itself), runstate."""

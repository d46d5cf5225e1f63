"""LoadBalancer IPs on the local network, as MetalLB's layer-2 mode does: who is alive
(members: gossip), who holds each IP (election, placement), telling the LAN (announce: ARP
and NDP), and writing allocations to Service status (allocator, with a Lease).

May import: model (the pools are model.pools), the kubernetes client. Not datapath, sources
or anything above."""

"""LoadBalancer IPs on the local network: address pools, and (next) membership, election and
ARP/NDP announcements, as MetalLB's layer-2 mode does."""

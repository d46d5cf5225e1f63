/* sessionAffinity ClientIP: a client keeps its backend for affinity_timeout seconds after its
 * last new connection, per backend group (like kube-proxy's per-Service-port affinity). */
#ifndef XLB_AFFINITY_H
#define XLB_AFFINITY_H

/* This client's pin if it is fresh (its entry, to refresh in place), else NULL. Whether its
 * backend is still the one pinned is xlb_affinity_backend's question. */
static __always_inline struct xlb_affinity *xlb_affinity_find(const struct xlb_svc *svc,
							      const union xlb_addr *client,
							      __u64 now)
{
	struct xlb_affinity_key k = {.group = svc->group};
	k.client = *client;
	struct xlb_affinity *a = xlb_affinity.lookup(&k);
	if (!a || now - a->last_used > (__u64)svc->affinity_timeout * XLB_NS_PER_SEC)
		return 0;
	return a;
}

/* The backend a pin names, if its id still stands for the address and port pinned (else
 * NULL: the endpoint went, and its id may be another Service's pod now). */
static __always_inline struct xlb_backend *xlb_affinity_backend(const struct xlb_affinity *pin)
{
	struct xlb_backend *be = pin ? xlb_backend_get(pin->backend) : 0;
	if (!be || be->port != pin->port || !xlb_addr_eq(&be->addr, &pin->addr))
		return 0;
	return be;
}

/* A pin being built: xdp_lb's stack has no room for one (BPF's 512 bytes). */
BPF_PERCPU_ARRAY(xlb_affinity_scratch, struct xlb_affinity, 1);

/* Pins client to backend from now on: in place when pin (what xlb_affinity_find gave) is
 * there, since an update of an LRU map takes a new element even for a key it holds (about
 * 250 ns here, a new flow's third such write); else a new entry. */
static __always_inline void xlb_affinity_set(const struct xlb_svc *svc,
					     const union xlb_addr *client,
					     struct xlb_affinity *pin, __u32 backend,
					     const struct xlb_backend *be, __u64 now)
{
	if (pin) { /* (a reader between these writes sees a pin that fails its check: a new pick) */
		pin->backend = backend;
		pin->port = be->port;
		pin->addr = be->addr;
		pin->last_used = now;
		return;
	}
	__u32 zero = 0;
	struct xlb_affinity *v = xlb_affinity_scratch.lookup(&zero);
	if (!v)
		return;
	v->backend = backend;
	v->port = be->port;
	v->addr = be->addr;
	v->last_used = now;
	struct xlb_affinity_key k = {.group = svc->group};
	k.client = *client;
	xlb_affinity.update(&k, v);
}

#endif

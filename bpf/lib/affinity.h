/* sessionAffinity ClientIP: a client keeps its backend for affinity_timeout seconds after its
 * last new connection, per backend group (like kube-proxy's per-Service-port affinity). */
#ifndef XLB_AFFINITY_H
#define XLB_AFFINITY_H

/* This client's pin if it is fresh (its entry, to refresh in place), else NULL. */
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

/* Pins client to backend from now on: in place when pin (what xlb_affinity_find gave)
 * holds that backend already, since an update of an LRU map takes a new element even for a
 * key it holds (about 250 ns here, a new flow's third such write); else a new entry. */
static __always_inline void xlb_affinity_set(const struct xlb_svc *svc,
					     const union xlb_addr *client,
					     struct xlb_affinity *pin, __u32 backend, __u64 now)
{
	if (pin && pin->backend == backend) {
		pin->last_used = now;
		return;
	}
	struct xlb_affinity_key k = {.group = svc->group};
	k.client = *client;
	struct xlb_affinity v = {.backend = backend, .last_used = now};
	xlb_affinity.update(&k, &v);
}

#endif

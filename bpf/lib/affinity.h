/* sessionAffinity ClientIP: a client keeps its backend for affinity_timeout seconds after its
 * last new connection, per backend group (like kube-proxy's per-Service-port affinity). */
#ifndef XLB_AFFINITY_H
#define XLB_AFFINITY_H

/* The backend this client is pinned to, if the pin is fresh; 0 otherwise. */
static __always_inline __u32 xlb_affinity_get(const struct xlb_svc *svc,
					      const union xlb_addr *client, __u64 now)
{
	struct xlb_affinity_key k = {.group = svc->group};
	k.client = *client;
	struct xlb_affinity *a = xlb_affinity.lookup(&k);
	if (!a || now - a->last_used > (__u64)svc->affinity_timeout * XLB_NS_PER_SEC)
		return 0;
	return a->backend;
}

/* Pins client to backend from now on. */
static __always_inline void xlb_affinity_set(const struct xlb_svc *svc,
					     const union xlb_addr *client, __u32 backend,
					     __u64 now)
{
	struct xlb_affinity_key k = {.group = svc->group};
	k.client = *client;
	struct xlb_affinity v = {.backend = backend, .last_used = now};
	xlb_affinity.update(&k, &v);
}

#endif

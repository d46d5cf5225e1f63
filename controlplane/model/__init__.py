"""The pure core: Kubernetes objects in, the state the datapath must hold out. No I/O here.

objects (the parsed kinds), parse (API dicts -> objects, with diagnostics), snapshot (one
cluster and what changed), pools (LoadBalancer address pools), endpoints and translate
(kube-proxy's rules), state (what the datapath must hold).

May import: nothing of controlplane, no bcc, no kubernetes client: it runs anywhere."""

from .diagnostics import Diagnostic, Level
from .objects import Endpoint, EndpointPort, EndpointSlice, Family, Node, Protocol, Service
from .state import Algorithm, Backend, DesiredState, Frontend, FrontendKind, NoBackend, Scope
from .translate import TranslateConfig, Translator, translate

__all__ = [
    "Algorithm",
    "Backend",
    "DesiredState",
    "Diagnostic",
    "Endpoint",
    "EndpointPort",
    "EndpointSlice",
    "Family",
    "Frontend",
    "FrontendKind",
    "Level",
    "Node",
    "NoBackend",
    "Protocol",
    "Scope",
    "Service",
    "TranslateConfig",
    "Translator",
    "translate",
]

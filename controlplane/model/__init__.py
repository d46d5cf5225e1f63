"""The pure core: Kubernetes objects in, the state the datapath must hold out. No I/O here."""

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

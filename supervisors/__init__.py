"""OTP supervision: child specs as data, supervisors, dynamic supervisors, the tree."""

from supervisors.dynamic import (
    DynamicSupervisor,
    dynamic_supervisor,
    start_child,
    start_children,
    terminate_child,
)
from supervisors.spec import (
    NO_BACKOFF,
    Backoff,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    worker,
)
from supervisors.supervisor import ChildError, Supervisor, SupervisorGaveUp, supervisor
from supervisors.tree import Tree, TreeFailed

__all__ = [
    "NO_BACKOFF",
    "Backoff",
    "ChildError",
    "ChildSpec",
    "DynamicSupervisor",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
    "SupervisorSpec",
    "Tree",
    "TreeFailed",
    "dynamic_supervisor",
    "start_child",
    "start_children",
    "supervisor",
    "terminate_child",
    "worker",
]

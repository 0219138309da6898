"""The route table, nginx semantics in Python, and nginx's consistent hash."""

from synfleet.routing.evaluate import Decision, evaluate
from synfleet.routing.plan import RoutingPlan, Upstream
from synfleet.routing.table import ROUTES, Access, Key, Rule

__all__ = ["ROUTES", "Access", "Decision", "Key", "RoutingPlan", "Rule", "Upstream", "evaluate"]

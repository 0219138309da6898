"""The route table, and its plan for one fleet: which worker serves each request."""

from synfleet.routing.evaluate import Decision, evaluate
from synfleet.routing.plan import RoutingPlan
from synfleet.routing.table import ROUTES, Access, Key, Rule

__all__ = ["ROUTES", "Access", "Decision", "Key", "RoutingPlan", "Rule", "evaluate"]

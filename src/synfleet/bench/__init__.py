"""`synfleet bench`: load a fleet, measure it, and model how it grows."""

"""The fleet: its file's schema (:mod:`synfleet.model.schema`), and the model it resolves into
(:mod:`synfleet.model.fleet`)."""

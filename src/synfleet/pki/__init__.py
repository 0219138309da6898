"""Certificates: how they are made (:mod:`~synfleet.pki.certificates`), and the fleet's own CA with
the certificates its links between hosts present (:mod:`~synfleet.pki.fleet`)."""

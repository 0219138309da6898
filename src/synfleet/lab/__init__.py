"""Several hosts on one machine, for tests that need more than one: federation between homeservers now,
fleets spread over hosts later.

- :class:`Lab` / :class:`Host` (``hosts``): network namespaces on a private bridge, each host with a 10.x
  address and a DNS name; ``host.run`` / ``host.popen`` start programs inside a host.
- ``dns``: the lab's dnsmasq, which answers the hosts' names and NXDOMAIN for everything else.
- :class:`CertificateAuthority` (``ca``): a private CA and server certificates for the hosts' names.
- ``netns``, ``stopping``: the iproute2 and stop-by-PID plumbing under them.

Needs root, iproute2 and dnsmasq (``dnsmasq-base``). :func:`unavailable_reason` says why a lab cannot be
built here, for tests that skip.
"""

from synfleet.lab.ca import CertificateAuthority
from synfleet.lab.errors import LabError
from synfleet.lab.hosts import Host, Lab
from synfleet.lab.netns import unavailable_reason

__all__ = ["CertificateAuthority", "Host", "Lab", "LabError", "unavailable_reason"]

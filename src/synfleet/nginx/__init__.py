"""nginx's semantics in Python, and how synfleet runs nginx.

- :mod:`~synfleet.nginx.uri`: ``$uri`` normalisation, ``$args`` and ``$arg_*``;
- :mod:`~synfleet.nginx.variables`: ``map`` and variable lookup;
- :mod:`~synfleet.nginx.ketama`: ``hash ... consistent``, bit for bit;
- :mod:`~synfleet.nginx.upstream`: an upstream and the server its balancer picks;
- :mod:`~synfleet.nginx.realip`: the client address (realip) and allow/deny networks;
- :mod:`~synfleet.nginx.config`: an existing config, parsed and evaluated;
- :mod:`~synfleet.nginx.lexer`: quoting tokens;
- :mod:`~synfleet.nginx.binary`: running the nginx binary:

  - :mod:`~synfleet.nginx.binary.command`: command lines, the installed version, nginx in the foreground;
  - :mod:`~synfleet.nginx.binary.harness`: stub upstreams and requests sent to a running nginx.
"""

"""The well-known ports of the fleet's programs, each written once."""

#: Where clients reach a homeserver without TLS, and nginx's port inside its container.
CLIENT_PORT = 8008
#: Federation's default port (a server name without a port is reached here), and nginx's HTTPS port
#: inside its container.
FEDERATION_PORT = 8448
#: PostgreSQL's port; the fleet's own listens there.
POSTGRES_PORT = 5432
REDIS_PORT = 6379

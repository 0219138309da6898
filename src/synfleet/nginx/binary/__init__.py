"""Running the nginx binary: its command line and version, and a harness that runs it for tests and checks."""

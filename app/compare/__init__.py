"""Plans side by side: parse 2 to 6 plans, estimate each through the service, and export them on one scale."""

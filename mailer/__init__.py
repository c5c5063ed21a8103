"""Alliance Mail: the daemon, its transport and its command line."""

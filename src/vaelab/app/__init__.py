"""The entry points: the command line (cli, parsers, commands) and the explorer's web server (serve)."""

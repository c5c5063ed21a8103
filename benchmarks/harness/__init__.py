"""The benchmark harness behind benchmarks/run.py (what it runs and checks: see there).

Its parts, each in a module of its own:

  cli               the options, the run of every scenario, the exit code
  catalogue         the scenarios' sizes, full and --short
  common            addresses, the log, HarnessError
  processes         child processes by PID (stop_process: the one way they are stopped),
                    /proc figures, the RSS sampler
  dns               the loopback DNS server with the DMARC record
  sink              Postfix's smtp-sink, its dump read and counted, the dump watcher
  daemon            config.toml, `alliance serve`, the CLI, benchmarks/make_*.py
  database          the trial's database (SQLite, or PostgreSQL made and dropped for it),
                    read-only, and its watcher
  poster            the SMTP clients
  profiling         py-spy (--profile) and its summary
  trial             one trial's rig and its one teardown (Rig.shut_down)
  scenario_lists    A, B, C, D, F: fan-out, intake, the digest
  scenario_meeting  E: invitations and replies, in named steps
  invitations       E's mail: invitations taken apart, Thunderbird's replies
  mailman           GNU Mailman 3 beside it (--with-mailman)
  report            the tables, the profiles, the JSON document, the last line

Only the standard library, and psycopg (the daemon's own driver) with `--database
postgresql://...`; the daemons and benchmarks/make_*.py run as subprocesses with this
checkout first on PYTHONPATH.
"""

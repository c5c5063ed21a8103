"""The crash harness behind tools/crash.py (what it runs and checks: see there).

  cli        the options, the scenarios one after another, the exit code
  rig        one scenario's folder, smtp-sink, DNS server, config, lists and the daemon's
             successive incarnations (started, SIGKILLed, stopped by PID)
  clients    SMTP clients posting numbered messages, sending again what got no 250
  killer     the SIGKILLs at random moments, and what was in flight at each
  disk       the small tmpfs and the filler file that fills it
  tally      the sink's dump and the database counted: undelivered, duplicates
  scenarios  intake, fanout, diskfull
  report     the table, the JSON document, the last line

It reuses benchmarks/harness/ (smtp-sink, DNS, config, the SMTP session, processes).
"""

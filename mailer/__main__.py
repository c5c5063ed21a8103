"""`python -m mailer` runs the command line."""

from mailer.cli import main

if __name__ == "__main__":   # not when a worker process is spawned from it
    main()

"""``python -m fedens`` is the ``fedens`` command."""

from fedens.cli import main

if __name__ == "__main__":
    main()

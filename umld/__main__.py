import sys

if sys.argv[1:2] == ["_warm"]:
    # The warm umld the front end starts (umld/_warm.py).
    from umld._warm import main as warm

    sys.exit(warm(sys.argv[2:]))

from umld.cli import entry

entry()

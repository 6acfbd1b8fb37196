from umld.cli import entry

entry()

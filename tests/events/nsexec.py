"""Run a command inside a named network namespace: `python nsexec.py NETNS CMD ARGS...`.

The test process never moves: this short-lived child enters the namespace with
pyroute2's netns.setns (flags=0: the namespace must already exist) and execs CMD.
"""
import os
import sys

from pyroute2 import netns

if __name__ == "__main__":
    netns.setns(sys.argv[1], flags=0)
    os.execv(sys.argv[2], sys.argv[2:])

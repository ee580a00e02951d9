#!/usr/bin/env python3
"""Runs the Eclipse Paho MQTT interoperability suites against a broker at HOST:PORT.

The suites live outside this repository (../shared/conformance/paho-mqtt-testing) and are used
unmodified: this wrapper imports a suite module, sets its module globals (host, port and the
topic lists; the suites' own command lines cannot target another port, see the conformance
README) and runs each test in a child process of its own under a timeout, because some tests
(MQTT 5 test_flow_control2) loop forever on a broker that does not enforce Receive Maximum.

    paho_wrapper.py SUITE_DIR HOST PORT LOG_DIR [--timeout 60] [--suite 3.1.1|5 ...] [--test NAME ...]

Prints one line per test, tab separated: suite, test, PASS / FAIL / TIMEOUT, seconds.
Each test's output goes to LOG_DIR/<suite>-<test>.log. Exit status 0 once every test ran.
The internal mode `--one SUITE TEST` runs a single test in this process (exit 0 = pass).
"""

import argparse
import importlib
import os
import signal
import subprocess
import sys
import time
import unittest

SUITES = {"3.1.1": "client_test", "5": "client_test5"}
TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
NOSUBSCRIBE = ("test/nosubscribe",)


def load(suite_dir, suite, host, port):
    sys.path.insert(0, os.path.join(suite_dir, "interoperability"))
    mod = importlib.import_module(SUITES[suite])
    mod.host = host
    mod.port = port
    mod.topics = TOPICS
    mod.wildtopics = WILDTOPICS
    mod.nosubscribe_topics = NOSUBSCRIBE
    # client_test5's shared-subscription test reads this global, set only in its __main__.
    mod.topic_prefix = "client_test5/"
    return mod


def test_names(suite_dir, suite):
    mod = load(suite_dir, suite, "127.0.0.1", 1883)
    return list(unittest.defaultTestLoader.getTestCaseNames(mod.Test))


def run_one(args):
    mod = load(args.suite_dir, args.one[0], args.host, args.port)
    test = unittest.defaultTestLoader.loadTestsFromName("Test." + args.one[1], mod)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(test)
    return 0 if result.wasSuccessful() and result.testsRun == 1 else 1


def run_all(args):
    # Terminated (scripts/conformance cleaning up): unwind, so the running test's process
    # group is killed in the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs(args.log_dir, exist_ok=True)
    suites = args.suite or list(SUITES)
    for suite in suites:
        names = test_names(args.suite_dir, suite)
        for name in names:
            if args.test and name not in args.test:
                continue
            log = os.path.join(args.log_dir, "%s-%s.log" % (suite, name))
            started = time.monotonic()
            with open(log, "wb") as out:
                child = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), args.suite_dir, args.host,
                     str(args.port), args.log_dir, "--one", suite, name],
                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    verdict = "PASS" if child.wait(timeout=args.timeout) == 0 else "FAIL"
                except subprocess.TimeoutExpired:
                    verdict = "TIMEOUT"
                finally:
                    # The suite's clients run receiver threads: end the whole process group.
                    try:
                        os.killpg(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    child.wait()
            print("%s\t%s\t%s\t%.0f" % (suite, name, verdict, time.monotonic() - started),
                  flush=True)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("suite_dir")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("log_dir")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--suite", action="append", choices=list(SUITES))
    p.add_argument("--test", action="append")
    p.add_argument("--one", nargs=2, metavar=("SUITE", "TEST"))
    args = p.parse_args()
    if args.one:
        return run_one(args)
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m bench COMMAND ...`: run one benchmark (the commands: bench/__init__.py). A benchmark module
holds `add_args(parser)` and `run(args)`; `plan` parses its own subcommands."""

import argparse
import importlib
import sys

import bench

# command -> its module, imported on use, so `plan --table` builds no model and
# `rollout` does not import the trainer
COMMANDS = {"rollout": "bench.sampler", "sp": "bench.ulysses", "shared": "bench.shared", "mrsp": "bench.mrsp",
            "plan": "bench.plan"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(bench.__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]])
    if argv[0] == "plan":  # validate / hour, or the memory plan's own flags
        module.main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog=f"python -m bench {argv[0]}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_args(parser)
    module.run(parser.parse_args(argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

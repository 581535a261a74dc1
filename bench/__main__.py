"""`python -m bench COMMAND ...`: run one benchmark (the commands: bench/__init__.py)."""

import importlib
import sys

import bench

# command -> the module whose main(argv) runs it; imported on use, so `plan --table` builds no model and
# `rollout` does not import the trainer
COMMANDS = {"rollout": "bench.sampler", "sp": "bench.ulysses", "shared": "bench.shared", "mrsp": "bench.mrsp",
            "plan": "bench.plan"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(bench.__doc__)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The performance figures of MR-SP, each against the path it replaces: one command, five subcommands.

    python -m bench rollout [--json PATH]   our KV-cache sampler, eager and compiled, vs transformers' generate
                                            (bench/sampler.py)
    python -m bench sp      [--json PATH]   sequence-parallel prefill + backward: memory and time vs sp
                                            (bench/ulysses.py)
    python -m bench shared  [--json PATH]   the shared prefix in training: an RL step with it on / off, and the
                                            update's saved activations per group, packed vs unpacked
                                            (bench/shared.py)
    python -m bench mrsp    [--quick] ...   one RL step vs frames: naive vs stage 1 vs stages 1+2 (+ shared
                                            prefix), the paper's Figure 2 (bench/mrsp.py; the naive baseline:
                                            bench/naive.py)
    python -m bench plan    [--table] ...   the memory plan per GPU (minirl/memplan.py; no model is built);
                   validate | hour          the plan vs measured step peaks; one RL step on an hour-long video
                                            (bench/plan.py)

`python -m bench COMMAND -h` lists a subcommand's flags. Each builds its own tiny model (and synthetic videos)
in a temporary directory, prints a table and, with --json, writes the same figures as JSON. What they share
(peak memory, one measured call, worker set-up) is bench/common.py. Imports run one way:
common <- everything; naive <- mrsp <- shared, plan.
"""

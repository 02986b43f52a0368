"""A small explain_dataset job shared by the dataset tests: imported for the in-process reference runs, and run
as a script by ``torchrun`` (two gloo ranks) and by the kill-and-resume test.

``--gate N``: every sample with index >= N blocks until a line arrives on stdin (or stdin closes), so a test can
kill the run at a known point (after the shards before N are written, in the middle of the shard holding N). With
``--announce-gate`` the job first writes one JSON line to stdout, ``{"gate": i, "fetched": [...]}``: the index
that reached the gate and every index fetched before it, so the test waits on that line instead of a timer.
"""
import argparse
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import Dataset

RULE = "epsilon-plus-flat"
LENGTH = 40
SHARD_SIZE = 8
BATCH_SIZE = 3  # does not divide the shard size: every shard ends with a short batch


def build_model() -> nn.Module:
    """float64 so that sums are reproducible to the bit across processes with one thread each."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).double().eval()


def build_tensors(length: int = LENGTH):
    g = torch.Generator().manual_seed(1)
    return torch.randn(length, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (length,), generator=g)


class GatedDataset(Dataset):
    """(x, label) pairs; items at index >= ``gate`` wait for a line on stdin (the test holds the other end).
    ``on_gate(i, fetched)`` is called once, when the first such item is asked for, before it waits."""

    def __init__(self, x, y, gate=None, on_gate=None):
        self.x, self.y, self.gate, self.on_gate = x, y, gate, on_gate
        self.fetched = []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.gate is not None and i >= self.gate:
            if self.on_gate is not None:
                self.on_gate(i, list(self.fetched))
                self.on_gate = None
            sys.stdin.readline()  # blocks: an event the test controls, not a timer
        self.fetched.append(i)
        return self.x[i], self.y[i]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--gate", type=int, default=None)
    parser.add_argument("--target", default=None)
    parser.add_argument("--announce-gate", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from lrpfx import explain_dataset

    x, y = build_tensors()
    target = args.target if args.target in (None, "label") else int(args.target)
    announce = _announce if args.announce_gate else None
    result = explain_dataset(build_model(), GatedDataset(x, y, args.gate, announce), RULE, args.out,
                             batch_size=BATCH_SIZE, shard_size=SHARD_SIZE, target=target, store="float64",
                             progress=False)
    s = result.stats
    line = json.dumps({"rank": s.rank, "world_size": s.world_size, "written": s.shards_written,
                       "skipped": s.shards_skipped, "pid": os.getpid()}) + "\n"
    os.write(1, line.encode())  # one write: the ranks share stdout, and print() may split text and newline
    return 0


def _announce(index, fetched):
    os.write(1, (json.dumps({"gate": index, "fetched": fetched}) + "\n").encode())


if __name__ == "__main__":
    sys.exit(main())

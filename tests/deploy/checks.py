"""What the deploy checks share: collect every problem, then report them all at once (a
reviewer fixing a manifest wants the whole list, not the first failure)."""

import sys


class Problems:
    def __init__(self, tool):
        self.tool = tool
        self.items = []

    def check(self, cond, msg):
        if not cond:
            self.items.append(msg)

    def finish(self, subject, ok_detail):
        """Exit 1 with one line per problem about SUBJECT, else print the ok line."""
        if self.items:
            for p in self.items:
                print(f"{self.tool}: {subject}: {p}", file=sys.stderr)
            sys.exit(1)
        print(f"{self.tool}: ok ({ok_detail})")

"""The NodeSelector: which node runs each stage, and why.

It scores the nodes it knows (this host from the node facts; Ray's nodes when Ray is in use)
by strategy, after filtering out the nodes that cannot meet a stage's resource hints:

- `balanced`: the node whose weighted use after placing the stage is lowest
  (CPU 0.4, GPU 0.4, memory 0.2), so load spreads by the scarcest mix;
- `pack`: the fullest node that still fits (keeps other nodes free for big stages);
- `spread`: the node with the fewest stages placed so far (ties by balanced score).

Every decision carries a one-line reason, stored with the job and shown by `sagectl job show`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import msgspec

from sage_client.protocol import NodeInfo

Strategy = Literal["balanced", "pack", "spread"]
WEIGHTS = {"cpu": 0.4, "gpu": 0.4, "memory": 0.2}


class PlacementError(Exception):
    """No known node can meet a stage's resource hints."""


class ResourceHints(msgspec.Struct, frozen=True):
    cpus: float = 0.0
    gpus: float = 0.0
    memory: int = 0  # bytes


@dataclass
class NodeCapacity:
    """A node's resources and what is already in use (or reserved by stages placed so far)."""

    node_id: str
    cpus: float
    gpus: float
    memory: int
    used_cpus: float = 0.0
    used_gpus: float = 0.0
    used_memory: int = 0
    stages: int = 0

    @classmethod
    def from_node_info(cls, node: NodeInfo) -> NodeCapacity:
        return cls(
            node_id=node.hostname,
            cpus=float(node.cpu_count),
            gpus=float(len(node.gpus)),
            memory=node.memory_total_bytes,
            used_memory=max(0, node.memory_total_bytes - node.memory_available_bytes),
        )

    def fits(self, hints: ResourceHints) -> str | None:
        """None when the hints fit, else why not."""
        if hints.gpus and self.gpus - self.used_gpus < hints.gpus:
            return f"{self.gpus - self.used_gpus:g} GPU free, needs {hints.gpus:g}"
        if hints.cpus and self.cpus - self.used_cpus < hints.cpus:
            return f"{self.cpus - self.used_cpus:g} CPU free, needs {hints.cpus:g}"
        if hints.memory and self.memory - self.used_memory < hints.memory:
            return f"{(self.memory - self.used_memory) / 2**30:.1f} GiB free, needs {hints.memory / 2**30:.1f} GiB"
        return None

    def score(self, hints: ResourceHints) -> float:
        """Weighted use after placing a stage with these hints: 0 idle .. 1 full."""

        def use(used: float, extra: float, total: float) -> float:
            return min(1.0, (used + extra) / total) if total > 0 else 0.0

        return (
            WEIGHTS["cpu"] * use(self.used_cpus, hints.cpus, self.cpus)
            + WEIGHTS["gpu"] * use(self.used_gpus, hints.gpus, self.gpus)
            + WEIGHTS["memory"] * use(self.used_memory, hints.memory, self.memory)
        )


class Decision(msgspec.Struct, frozen=True):
    stage: str
    node: str
    strategy: str
    reason: str


@dataclass
class NodeSelector:
    nodes: list[NodeCapacity]
    strategy: Strategy = "balanced"
    decisions: list[Decision] = field(default_factory=list)

    def select(self, stage: str, hints: ResourceHints, parallelism: int = 1) -> Decision:
        """Place a stage (all its workers) on one node and reserve its hints there."""
        if not self.nodes:
            raise PlacementError(f"stage {stage!r}: no node is known to the selector")
        total = ResourceHints(hints.cpus * parallelism, hints.gpus * parallelism, hints.memory * parallelism)
        refused = {n.node_id: why for n in self.nodes if (why := n.fits(total))}
        candidates = [n for n in self.nodes if n.node_id not in refused]
        if not candidates:
            detail = "; ".join(f"{node}: {why}" for node, why in refused.items())
            raise PlacementError(f"stage {stage!r} needs cpus={total.cpus:g} gpus={total.gpus:g} memory={total.memory} and no node has it ({detail})")
        scores = {n.node_id: n.score(total) for n in candidates}
        if self.strategy == "pack":
            chosen = max(candidates, key=lambda n: (scores[n.node_id], n.node_id))
            why = f"pack: fullest node that fits (weighted use {scores[chosen.node_id]:.2f} after placing)"
        elif self.strategy == "spread":
            chosen = min(candidates, key=lambda n: (n.stages, scores[n.node_id], n.node_id))
            why = f"spread: fewest stages placed ({chosen.stages}), weighted use {scores[chosen.node_id]:.2f}"
        else:
            chosen = min(candidates, key=lambda n: (scores[n.node_id], n.node_id))
            why = f"balanced: lowest weighted use {scores[chosen.node_id]:.2f} (cpu 0.4, gpu 0.4, memory 0.2)"
        if len(candidates) > 1:
            others = ", ".join(f"{n.node_id} {scores[n.node_id]:.2f}" for n in candidates if n is not chosen)
            why += f"; others: {others}"
        else:
            why += "; the only node" + (" that fits" if refused else " known")
        if refused:
            why += "; refused: " + "; ".join(f"{node} ({reason})" for node, reason in refused.items())
        if hints != ResourceHints():
            why += f"; hints cpus={hints.cpus:g} gpus={hints.gpus:g} memory={hints.memory} x{parallelism}"
        chosen.used_cpus += total.cpus
        chosen.used_gpus += total.gpus
        chosen.used_memory += total.memory
        chosen.stages += 1
        decision = Decision(stage, chosen.node_id, self.strategy, why)
        self.decisions.append(decision)
        return decision

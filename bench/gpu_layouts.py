"""Where the actors run on a GPU host, for the multi-GPU run (issue 12): layouts as config.

A *placement* is one launcher plan for a number of GPUs: the tool actor and every
chat replica that any layout needs, each with its GPU (``actor.*_gpus``) and its
share of that GPU's memory (``actor.*_gpu_fracs``). A *layout* is the set of chat
replicas that serve while it is measured; the tool actor serves in all of them.
Going from one layout to the next starts and stops chat replicas only, so one run
pays for each engine start once:

* (a) tool and chat co-resident on GPU 0 (``chat-0``, today's layout);
* (c) tool on GPU 0 beside chat replica 1 (``chat-0``), chat replica 2 on GPU 1
  (``chat-1``);
* (b) tool on GPU 0, chat on GPU 1 (``chat-1`` alone);
* (d) on 4 GPUs, 1 tool and 3 chat replicas (``chat-1`` .. ``chat-3``, GPUs 1-3).

The run order is a, c, b, d: chat-0 serves (a), chat-1 joins it for (c), chat-0
leaves for (b), chat-2 and chat-3 join chat-1 for (d). The tool keeps its 0.20 of
GPU 0 throughout; in (b) and (d) the rest of GPU 0 is idle (``docs/deploy.md``
gives the tool 0.9 there, which changes nothing but the size of its KV cache).

With one GPU there is only a smoke version, to try the run before a multi-GPU
machine is lent: (a) at chat 0.35, then (c1), a second chat replica on the same
GPU at 0.35 (replicas by memory fraction). Everything here is pure and
unit-tested; ``bench.gpu_fullstack --layouts`` runs it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "Layout",
    "Placement",
    "gpu_count",
    "placement_for",
    "transition",
]

TOOL_FRAC: Final = 0.20
# A chat replica beside the tool on GPU 0, and one with a GPU of its own.
SHARED_CHAT_FRAC: Final = 0.70
OWN_CHAT_FRAC: Final = 0.90
# One GPU: two chat replicas beside the tool, by memory fraction.
HALF_CHAT_FRAC: Final = 0.35


@dataclass(frozen=True, slots=True)
class Layout:
    """One measured configuration: the chat slots that serve in it."""

    name: str
    title: str
    chats: tuple[str, ...]
    gpus: int  # the fewest GPUs it needs


@dataclass(frozen=True, slots=True)
class Placement:
    """Every replica any of ``layouts`` needs, placed; ``layouts`` in run order."""

    gpus: int
    tool_gpu: str
    chat_gpus: tuple[str, ...]
    chat_fracs: tuple[float, ...]
    layouts: tuple[Layout, ...]

    @property
    def chat_slots(self) -> tuple[str, ...]:
        return tuple(f"chat-{i}" for i in range(len(self.chat_gpus)))

    def actor_section(self) -> dict[str, Any]:
        """The ``[actor]`` keys of this placement (merged into the run's config)."""
        return {
            "tool_replicas": 1,
            "chat_replicas": len(self.chat_gpus),
            "tool_gpus": [self.tool_gpu],
            "tool_gpu_fracs": [TOOL_FRAC],
            "chat_gpus": list(self.chat_gpus),
            "chat_gpu_fracs": list(self.chat_fracs),
        }

    def deferred(self) -> frozenset[str]:
        """Chat slots that do not serve in the first layout: started when needed."""
        first = set(self.layouts[0].chats) if self.layouts else set()
        return frozenset(slot for slot in self.chat_slots if slot not in first)

    def describe(self, layout: Layout) -> str:
        """``chat-0 on GPU 0 at 0.70, chat-1 on GPU 1 at 0.90`` for one layout."""
        parts = [f"tool-0 on GPU {self.tool_gpu} at {TOOL_FRAC:.2f}"]
        for slot in layout.chats:
            index = self.chat_slots.index(slot)
            parts.append(f"{slot} on GPU {self.chat_gpus[index]} at {self.chat_fracs[index]:.2f}")
        return ", ".join(parts)


_A: Final = Layout("a", "tool and chat co-resident on GPU 0", ("chat-0",), 1)
_C: Final = Layout(
    "c", "tool on GPU 0 beside chat replica 1, chat replica 2 on GPU 1", ("chat-0", "chat-1"), 2
)
_B: Final = Layout("b", "tool on GPU 0, chat on GPU 1", ("chat-1",), 2)
_D: Final = Layout(
    "d", "tool on GPU 0, 3 chat replicas on GPUs 1-3", ("chat-1", "chat-2", "chat-3"), 4
)
_C1: Final = Layout(
    "c1", "one GPU: tool beside 2 chat replicas by memory fraction", ("chat-0", "chat-1"), 1
)


def placement_for(gpus: int, names: Sequence[str] = ()) -> Placement:
    """The placement for ``gpus`` GPUs, with the layouts ``names`` (all that fit when
    empty), in run order.

    Raises:
        ValueError: no GPU, or a named layout that does not fit ``gpus`` GPUs.
    """
    if gpus < 1:
        raise ValueError("the layouts need at least one GPU")
    if gpus == 1:
        placement = Placement(
            gpus=1,
            tool_gpu="0",
            chat_gpus=("0", "0"),
            chat_fracs=(HALF_CHAT_FRAC, HALF_CHAT_FRAC),
            layouts=(_A, _C1),
        )
    else:
        chats = 4 if gpus >= 4 else 2
        placement = Placement(
            gpus=gpus,
            tool_gpu="0",
            chat_gpus=tuple(str(i) for i in range(chats)),
            chat_fracs=(SHARED_CHAT_FRAC,) + (OWN_CHAT_FRAC,) * (chats - 1),
            layouts=tuple(layout for layout in (_A, _C, _B, _D) if layout.gpus <= gpus),
        )
    if not names:
        return placement
    known = {layout.name: layout for layout in placement.layouts}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"layouts {', '.join(unknown)} do not run on {gpus} GPU(s); "
            f"these do: {', '.join(known)}"
        )
    picked = tuple(layout for layout in placement.layouts if layout.name in names)
    # Only the replicas the picked layouts use; the others are never planned.
    used = sorted({int(slot.split("-")[1]) for layout in picked for slot in layout.chats})
    keep = range(max(used) + 1)
    return Placement(
        gpus=gpus,
        tool_gpu=placement.tool_gpu,
        chat_gpus=tuple(placement.chat_gpus[i] for i in keep),
        chat_fracs=tuple(placement.chat_fracs[i] for i in keep),
        layouts=picked,
    )


def transition(running: Sequence[str], layout: Layout) -> tuple[list[str], list[str]]:
    """(slots to stop, slots to start) to go from ``running`` chat slots to ``layout``.

    Stops come first when carried out: a GPU's memory is free before a new engine
    measures it.
    """
    stop = [slot for slot in running if slot not in layout.chats]
    start = [slot for slot in layout.chats if slot not in running]
    return stop, start


def gpu_count() -> int:
    """GPUs this machine has, by ``nvidia-smi -L`` (0 without a driver)."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))

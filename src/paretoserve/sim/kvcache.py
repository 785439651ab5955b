"""Paged KV-cache block manager of one replica, with a prefix cache (vLLM V1 `BlockPool` semantics).

Blocks are counted, not addressed: a sequence holding context `c` owns ceil(c / block_size) blocks,
some of them in *shared* prefix-cache entries. An entry is one group of blocks identified by a key
and holds a reference count; when it drops to 0 the entry stays cached and *evictable*: its blocks
count as free, and it is evicted (least recently freed first) only when no plain free block is left.

Entries (one per group, so a 10,000-token prompt costs ~20 entries, not 600):

- a request's prompt blocks covered by its prefix hashes (Mooncake `hash_ids`, each covering
  `prefix_block_tokens` tokens): one entry per hash, key ``(hash, group index)``; lookups walk the
  groups from the first and stop at the first miss, so a hit implies the whole prefix matched;
- each full block after those of a preempted sequence (prompt and generated tokens): key
  ``(uid, index, 0)``, so that a request resuming after preemption by recompute re-uses whatever of
  its own KV has not been evicted yet, as vLLM V1 does (block by block, as vLLM evicts them).

Units: blocks and tokens.
"""

from __future__ import annotations

from collections import OrderedDict

from paretoserve.sim.sequence import Sequence


class BlockManager:
    """Free-block accounting, prefix cache with reference counts and LRU eviction.

    Args:
        num_blocks: KV blocks of the replica.
        block_size: tokens per block.
        prefix_caching: reuse blocks by hash across requests.
        watermark: fraction of blocks kept free when admitting new requests (vLLM V0's
            `watermark`; vLLM V1 uses 0).
    """

    __slots__ = ("num_blocks", "block_size", "prefix_caching", "watermark_blocks", "free_plain",
                 "refs", "sizes", "evictable", "evictable_blocks", "peak_used")

    def __init__(self, num_blocks: int, block_size: int = 16, *, prefix_caching: bool = True,
                 watermark: float = 0.0) -> None:
        if num_blocks < 1:
            raise ValueError(f"need at least one KV block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        self.free_plain = num_blocks             # free blocks that hold no cached content
        self.refs: dict[object, int] = {}        # entry key -> reference count
        self.sizes: dict[object, int] = {}       # entry key -> blocks
        self.evictable: OrderedDict[object, None] = OrderedDict()  # entries with 0 references
        self.evictable_blocks = 0
        self.peak_used = 0

    # ------------------------------------------------------------------ counting
    @property
    def free(self) -> int:
        """Blocks that can be allocated now (plain free plus evictable cached blocks)."""
        return self.free_plain + self.evictable_blocks

    @property
    def used(self) -> int:
        """Blocks referenced by sequences."""
        return self.num_blocks - self.free_plain - self.evictable_blocks

    def take(self, n: int) -> None:
        """Allocate `n` blocks (the caller checked `free >= n`), evicting LRU cached entries last."""
        plain = self.free_plain
        if n <= plain:
            self.free_plain = plain - n
        else:
            short = n - plain
            evictable, refs, sizes = self.evictable, self.refs, self.sizes
            while short > 0:
                key = evictable.popitem(last=False)[0]
                del refs[key]
                size = sizes.pop(key)
                self.evictable_blocks -= size
                short -= size
            self.free_plain = -short  # what the last evicted entry had beyond the need
        used = self.num_blocks - self.free_plain - self.evictable_blocks
        if used > self.peak_used:
            self.peak_used = used

    # ------------------------------------------------------------------ prefix cache
    def _hashed_key(self, seq: Sequence, group: int) -> tuple[int, int]:
        """Key of hashed group `group` of `seq`: the hash covering its last token."""
        request = seq.request
        last_token = min((group + 1) * seq.span, seq.hashable) * self.block_size - 1
        return (request.prefix_hashes[last_token // request.prefix_block_tokens], group)

    def _group_blocks(self, seq: Sequence, group: int) -> int:
        """Blocks of hashed group `group` of `seq`."""
        return min(seq.span, seq.hashable - group * seq.span)

    def match(self, seq: Sequence, max_blocks: int) -> tuple[list[object], int, int]:
        """Cached leading blocks of `seq`: (entry keys, blocks hit (<= max_blocks), blocks of the
        hit entries that are evictable now and would stop being free).

        The last entry may be used only in part (it is longer than the request's group, or the
        request must recompute its last token); it is still held whole.
        """
        keys: list[object] = []
        hit = evictable_hit = 0
        refs, sizes = self.refs, self.sizes
        group = 0
        while hit < max_blocks:
            if group < seq.groups:
                key: object = self._hashed_key(seq, group)
                expected = self._group_blocks(seq, group)
            elif seq.preemptions:
                key = (seq.uid, group - seq.groups, 0)
                expected = 1
            else:
                break
            ref = refs.get(key)
            if ref is None:
                break
            size = sizes[key]
            keys.append(key)
            if ref == 0:
                evictable_hit += size
            usable = min(size, expected, max_blocks - hit)
            hit += usable
            if usable < expected:
                break
            group += 1
        return keys, hit, evictable_hit

    def acquire(self, keys: list[object]) -> None:
        """Take a reference on cached entries found by `match`."""
        refs, sizes, evictable = self.refs, self.sizes, self.evictable
        for key in keys:
            ref = refs[key]
            if ref == 0:
                del evictable[key]
                self.evictable_blocks -= sizes[key]
            refs[key] = ref + 1
        used = self.num_blocks - self.free_plain - self.evictable_blocks
        if used > self.peak_used:
            self.peak_used = used

    def register(self, seq: Sequence, computed: int) -> None:
        """Offer `seq`'s hashed groups completed by `computed` tokens to the cache (first writer
        wins: a group already cached by another request stays plain blocks of `seq`)."""
        full = computed // self.block_size
        refs = self.refs
        group = seq.registered
        while group < seq.groups:
            size = self._group_blocks(seq, group)
            if full < group * seq.span + size:
                break
            key = self._hashed_key(seq, group)
            if key not in refs:
                refs[key] = 1
                self.sizes[key] = size
                if seq.shared is None:
                    seq.shared = []
                seq.shared.append(key)
                seq.shared_blocks += size
            group += 1
        seq.registered = group

    def release(self, seq: Sequence, blocks: int, *, park: bool) -> None:
        """Free the `blocks` blocks `seq` holds; its shared entries stay cached (evictable).

        With `park`, the sequence's full blocks after its hashed prefix are cached too under its own
        keys (latest first in eviction order), so that a resumed (recomputed) sequence can hit them.
        """
        refs, sizes, evictable = self.refs, self.sizes, self.evictable
        shared = seq.shared
        if shared:
            for key in reversed(shared):
                ref = refs[key] - 1
                refs[key] = ref
                if ref == 0:
                    evictable[key] = None
                    self.evictable_blocks += sizes[key]
        plain = blocks - seq.shared_blocks
        seq.shared = None
        seq.shared_blocks = 0
        seq.registered = 0
        if park and self.prefix_caching:
            tail = min(blocks, seq.computed // self.block_size) - seq.hashable
            for index in range(tail - 1, -1, -1):
                key = (seq.uid, index, 0)
                if key in refs:  # re-used on resume: freed above with the shared entries
                    continue
                refs[key] = 0
                sizes[key] = 1
                evictable[key] = None
                self.evictable_blocks += 1
                plain -= 1
        self.free_plain += plain
